/** The objects a campaign refers to, shown by name: segments and channels are loaded once per page
 * from their list endpoints (GET /api/v1/segments, /api/v1/channels); a reference shows the name,
 * linked to the object's page, with its id in a tooltip. Until the list has loaded, or when the
 * object is gone (deleted), the id itself is shown. */
import { Tooltip } from "antd";
import { Link } from "react-router-dom";
import { api } from "../../api/client";
import type { Channel, Segment } from "../../api/types";
import { useI18n } from "../../i18n";
import { useApi, type Loaded } from "../../useApi";

export interface RefName {
  name: string;
  /** Shown after the id in the tooltip (a channel's kind). */
  hint?: string;
}

export type RefIndex = Loaded<Map<string, RefName>>;

export function useSegmentNames(): RefIndex {
  return useApi(async (signal) => {
    const list = await api.raw<Segment[]>("get", "/api/v1/segments", undefined, { signal });
    return new Map(list.map((s) => [s.segment_id, { name: s.name }]));
  });
}

export function useChannelNames(): RefIndex {
  return useApi(async (signal) => {
    const list = await api.raw<Channel[]>("get", "/api/v1/channels", undefined, { signal });
    return new Map(list.map((c) => [c.channel_id, { name: c.name, hint: c.kind }]));
  });
}

/** A reference by name (linked to ``to`` when given) with the id in a tooltip. */
export function Ref({ id, index, to }: { id: string; index: RefIndex; to?: string }) {
  const { t } = useI18n();
  const found = index.data?.get(id);
  if (!found) {
    return (
      <Tooltip title={index.data ? t("campaigns.refMissing") : undefined}>
        <span className="gk-mono" data-testid="ref" data-id={id}>{id}</span>
      </Tooltip>
    );
  }
  const tip = <span className="gk-mono">{found.hint ? `${id} · ${found.hint}` : id}</span>;
  return (
    <Tooltip title={tip}>
      {to ? <Link to={to} data-testid="ref" data-id={id}>{found.name}</Link> : <span data-testid="ref" data-id={id}>{found.name}</span>}
    </Tooltip>
  );
}
