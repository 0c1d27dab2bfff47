/** An ECharts chart (tree-shaken: only the chart types and components the console uses). */
import { useEffect, useRef } from "react";
import * as echarts from "echarts/core";
import { BarChart, CustomChart, HeatmapChart, LineChart, PieChart, SankeyChart } from "echarts/charts";
import { DatasetComponent, GridComponent, LegendComponent, MarkLineComponent, TitleComponent, TooltipComponent, VisualMapComponent } from "echarts/components";
import { CanvasRenderer } from "echarts/renderers";
import type { EChartsCoreOption } from "echarts/core";

echarts.use([BarChart, LineChart, PieChart, HeatmapChart, SankeyChart, CustomChart, GridComponent, TooltipComponent, LegendComponent, TitleComponent, DatasetComponent, VisualMapComponent, MarkLineComponent, CanvasRenderer]);

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
