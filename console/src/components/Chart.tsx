/** An ECharts chart (tree-shaken: only the chart types and components the console uses). */
import { useEffect, useRef } from "react";
import * as echarts from "echarts/core";
import { BarChart, CustomChart, HeatmapChart, LineChart, PieChart, SankeyChart } from "echarts/charts";
import { DatasetComponent, GridComponent, LegendComponent, MarkLineComponent, TitleComponent, TooltipComponent, VisualMapComponent } from "echarts/components";
import { CanvasRenderer } from "echarts/renderers";
import type { EChartsCoreOption } from "echarts/core";

echarts.use([BarChart, LineChart, PieChart, HeatmapChart, SankeyChart, CustomChart, GridComponent, TooltipComponent, LegendComponent, TitleComponent, DatasetComponent, VisualMapComponent, MarkLineComponent, CanvasRenderer]);

/** Text made safe inside an ECharts tooltip ``formatter``, whose return value is HTML (ECharts escapes
 * only its own default tooltips): campaign, arm, segment and event names are the users'. */
export function escapeHtml(text: unknown): string {
  return String(text ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c] as string);
}

export const PALETTE = ["#c8961e", "#1f5fa8", "#3f9b6b", "#d4613e", "#7a5bb5", "#2a9bb0", "#b04a7a", "#8a8f98", "#e0b84f", "#5b7fd1", "#6fb48c"];

export function Chart({ option, height = 300, label }: { option: EChartsCoreOption; height?: number; label: string }) {
  const el = useRef<HTMLDivElement>(null);
  const chart = useRef<echarts.ECharts | null>(null);
  useEffect(() => {
    if (!el.current) return;
    chart.current = echarts.init(el.current);
    const ro = new ResizeObserver(() => chart.current?.resize());
    ro.observe(el.current);
    return () => {
      ro.disconnect();
      chart.current?.dispose();
      chart.current = null;
    };
  }, []);
  useEffect(() => {
    chart.current?.setOption({ color: PALETTE, animationDuration: 400, animationDurationUpdate: 300, textStyle: { fontFamily: "inherit" }, ...option }, true);
  }, [option]);
  return <div ref={el} role="img" aria-label={label} className="gk-chart" style={{ height, width: "100%" }} />;
}

/** A series of 95 % interval whiskers over a category axis: ``intervals[i] = [low, high]`` of the i-th
 * category, in the y axis' unit. Both ends are encoded on the y axis, so its extent covers the
 * whiskers and they stay inside the grid (and the canvas) however wide the interval. */
export function intervalSeries(intervals: number[][], name = "95% CI") {
  const style = { stroke: "#1f2937", lineWidth: 1.5 };
  return {
    type: "custom", name, z: 10, encode: { x: 0, y: [1, 2] },
    data: intervals.map(([lo, hi], i) => [i, lo, hi]),
    renderItem: (_: unknown, api: { value: (i: number) => number; coord: (p: number[]) => number[]; size: (p: number[]) => number[] }) => {
      const x = api.value(0);
      const lo = api.coord([x, api.value(1)]);
      const hi = api.coord([x, api.value(2)]);
      const w = Math.min(8, api.size([1, 0])[0] * 0.12);
      return { type: "group", children: [
        { type: "line", shape: { x1: lo[0], y1: lo[1], x2: hi[0], y2: hi[1] }, style },
        { type: "line", shape: { x1: lo[0] - w, y1: lo[1], x2: lo[0] + w, y2: lo[1] }, style },
        { type: "line", shape: { x1: hi[0] - w, y1: hi[1], x2: hi[0] + w, y2: hi[1] }, style },
      ] };
    },
  };
}
