"""The console's insight, campaign and journey pages in a real browser (Chromium through Playwright)
against a real Goldkey server.

The demo market of ``test_console_e2e`` is loaded through the real paths; the fixture then runs the
models through the REST API (churn, lifecycle, clusters, affinity; the demo already ran RFM) and
creates a sink channel. The walk: every insight page renders the API's figures (RFM grid, churn
versions and charts, lifecycle Sankey, clusters with "save as segment", cross-sell rules, a funnel
built by picking events and checked against the funnel API, cohorts and channels), a refit from the
page makes a new model version, CLV shows the API's refusal when the fit cannot converge on this
small market; a campaign created in the form (a misspelled template variable refused on its field
first), launched to the sink channel, its progress and report equal to the API's; a journey built
by dragging steps from the palette onto the canvas, publishing refused with the error on the
offending step, then connected by dragging handles, published, and per-step counts shown once the
journey runner moved the customers. Screenshots go to tests/console/screenshots/.

The demo's closed loop has already run its own campaigns in this market (and set its workspaces'
quiet hours off), so the console's campaign is one more next to them.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from rich.console import Console
from test_console_e2e import Site, browser, page, pick, shot, sign_in  # noqa: F401 - fixtures

from goldkey.api.console import dist_dir
from goldkey.app import create_app
from goldkey.demo.run import BackgroundServer, run_demo
from goldkey.runtime import Goldkey
from goldkey.settings import Settings

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    if not (dist_dir() / "index.html").is_file():
        pytest.fail(f"the console is not built ({dist_dir()} has no index.html): run `make console`")
    tmp = tmp_path_factory.mktemp("console-e2e-activation")
    settings = Settings(data_dir=tmp / "data", port=0)
    log = (tmp / "demo.log").open("w")
    try:
        result = run_demo(settings, customers=200, events=8_000, seed=11, serve_forever=False,
                          console=Console(file=log, width=200))
    finally:
        log.close()
    gk = Goldkey.open(settings)
    app = create_app(gk=gk)
    server = BackgroundServer(app, "127.0.0.1", 0)
    try:
        s = Site(server.start(), gk, result.brands)
        with s.api(s.brands[0].admin_token) as api:
            # the demo market's history ends today, so churn is learnt as of now, as a user would
            for path, body in (("/api/v1/insights/churn/train", {}), ("/api/v1/insights/lifecycle/run", {}),
                               ("/api/v1/insights/clusters/run", {}), ("/api/v1/insights/affinity/run", {})):
                r = api.post(path, json=body)
                assert r.status_code == 200, (path, r.text)
            r = api.post("/api/v1/channels", json={"name": "e2e-sink", "kind": "sink"})
            assert r.status_code == 201, r.text
        yield s
    finally:
        server.stop()
        gk.close()


def canvas_ok(pg: Any, scope: Any) -> None:
    c = scope.locator(".gk-chart canvas").first
    c.wait_for()
    assert c.bounding_box()["height"] > 100


def test_insight_campaign_and_journey_walk(page: Any, site: Site) -> None:  # noqa: F811
    try:
        walk(page, site)
    except Exception:
        shot(page, "activation-failure")
        raise


def walk(pg: Any, site: Site) -> None:
    brand = site.brands[0]
    api = site.api(brand.admin_token)
    pg.goto(site.url + "/sign-in")
    sign_in(pg, site, brand.admin_token)
    pg.wait_for_url(site.url + "/")
    insight_pages(pg, site, api)
    campaign(pg, site, api)
    journey(pg, site, api)
    assert pg.errors == []


def card(pg: Any, title: str) -> Any:
    return pg.locator(".ant-card", has=pg.locator(".ant-card-head-title", has_text=title))


def insight_pages(pg: Any, site: Site, api: Any) -> None:
    # RFM: the grid's total and version are the API's; the chart draws
    grid = api.get("/api/v1/console/rfm-grid").json()
    assert grid["scored"] > 0
    pg.get_by_role("menuitem", name="洞察").click()
    pg.get_by_role("menuitem", name="RFM 矩阵").click()
    pg.get_by_text(f"已评分 {grid['scored']} 位客户").wait_for()
    assert pg.get_by_test_id("model-version").get_attribute("data-version") == str(grid["version"])
    canvas_ok(pg, card(pg, "R × F 矩阵"))
    assert pg.get_by_role("cell", name="冠军客户（重要价值客户）").is_visible()
    shot(pg, "insight-rfm")

    # churn: a row per version with the API's AUC, lift and gain charts, drivers
    ev = api.get("/api/v1/insights/models/churn/evaluation").json()
    pg.get_by_role("menuitem", name="流失模型").click()
    row = pg.locator("tr", has_text=f"v{ev['versions'][-1]['version']}")
    row.get_by_text(f"{ev['versions'][-1]['auc']:.3f}".rstrip("0").rstrip("."), exact=True).first.wait_for()
    for title in ("各十分位提升度", "累计增益", "主要原因（特征重要性）"):
        canvas_ok(pg, card(pg, title))
    shot(pg, "insight-churn")

    # a scored customer's profile page says why: the churn score and the reasons behind it, as the
    # reasons endpoint gives them
    pid = site.gk.analytical.query(
        "SELECT profile_id FROM profile_reasons WHERE model = 'churn' AND payload LIKE '%contribution%' "
        "ORDER BY profile_id LIMIT 1")[0][0]
    why = api.get(f"/api/v1/insights/profiles/{pid}/reasons").json()["models"]["churn"]
    assert why["reasons"]
    pg.goto(f"{site.url}/customers/{pid}")
    reasons = pg.get_by_test_id("score-reasons")
    reasons.get_by_text(f"{why['score'] * 100:.1f}%").wait_for()
    assert reasons.locator("tbody tr").count() == len(why["reasons"])
    assert reasons.get_by_text(f"+{why['reasons'][0]['contribution']:.2f}").first.is_visible()
    shot(pg, "profile-reasons")
    pg.go_back()  # to the churn page, where the insight menu is open
    pg.get_by_role("menuitem", name="生命周期").wait_for()

    # lifecycle: the Sankey; a refit from the page makes the next version
    lc = api.get("/api/v1/insights/lifecycle/summary").json()
    pg.get_by_role("menuitem", name="生命周期").click()
    canvas_ok(pg, card(pg, "阶段流转（上次 → 本次）"))
    assert pg.get_by_test_id("model-version").get_attribute("data-version") == str(lc["version"])
    pg.get_by_role("button", name="重新训练").click()
    pg.wait_for_function("v => document.querySelector('[data-testid=model-version]')?.dataset.version === v",
                         arg=str(lc["version"] + 1), timeout=60_000)
    assert api.get("/api/v1/insights/lifecycle/summary").json()["version"] == lc["version"] + 1
    canvas_ok(pg, card(pg, "各阶段客户数"))
    shot(pg, "insight-lifecycle")

    # clusters: one card per cluster with its description; "save as segment" opens the segment
    cl = api.get("/api/v1/insights/clusters").json()
    pg.get_by_role("menuitem", name="客户聚类").click()
    cards = pg.get_by_test_id("cluster-card")
    cards.first.wait_for()
    assert cards.count() == len(cl["clusters"])
    assert pg.get_by_text(cl["clusters"][0]["description_zh"]).is_visible()
    shot(pg, "insight-clusters")
    cards.first.get_by_role("button", name=re.compile("保存为人群")).click()
    pg.wait_for_url(re.compile(r"/segments/seg_"))

    # cross-sell rules: the API's rules, filtered by lift
    rules = api.get("/api/v1/insights/affinity/rules", params={"min_lift": 1, "limit": 500}).json()
    pg.get_by_role("menuitem", name="交叉销售规则").click()
    pg.get_by_text(f"共 {len(rules['rules'])} 条规则").wait_for()
    assert len(rules["rules"]) > 0
    shot(pg, "insight-cross-sell")

    # reports: a funnel by picking events, equal to the funnel API for the same request
    pg.get_by_role("menuitem", name="分析报表").click()
    for ev_name in ("Product Viewed", "Product Added", "Order Completed"):
        pick(pg, "步骤（按顺序选择事件）", ev_name)
    pg.keyboard.press("Escape")
    with pg.expect_response(re.compile(r"/reports/funnel$")) as resp:
        pg.get_by_role("button", name="生成漏斗").click()
    sent = json.loads(resp.value.request.post_data)
    want = api.post("/api/v1/insights/reports/funnel", json=sent).json()
    table = pg.get_by_test_id("funnel-table")
    table.wait_for()
    for st in want["steps"]:
        assert table.locator("tr", has_text=st["event"]).locator("td").nth(2).inner_text().replace(",", "") \
            == str(st["profiles"])
    canvas_ok(pg, pg.locator(".ant-tabs-tabpane-active"))
    shot(pg, "insight-funnel")
    pg.get_by_role("tab", name="同期群留存").click()
    canvas_ok(pg, pg.locator(".ant-tabs-tabpane-active"))
    shot(pg, "insight-cohorts")
    pg.get_by_role("tab", name="渠道质量").click()
    ch = api.get("/api/v1/insights/reports/channels").json()
    pg.locator(".ant-tabs-tabpane-active tbody tr").nth(len(ch["channels"]) - 1).wait_for()
    shot(pg, "insight-channels")

    # CLV: a run from the page either fits (the page then shows the API's version) or, when this small
    # market's repeat purchases cannot identify BG/NBD, shows the API's refusal
    pg.get_by_role("menuitem", name="客户价值（CLV）").click()
    pg.get_by_text("还没有 CLV 模型").wait_for()
    pg.get_by_role("button", name=re.compile(r"运\s?行")).click()
    done = pg.locator("[data-testid=model-version], [role=alert]:has-text('模型无法运行')").first
    done.wait_for(timeout=90_000)
    summary = api.get("/api/v1/insights/clv/summary")
    if summary.status_code == 200:
        assert pg.get_by_test_id("model-version").get_attribute("data-version") == str(summary.json()["version"])
        canvas_ok(pg, card(pg, "CLV 分布"))
    else:
        refused = api.post("/api/v1/insights/clv/run", json={})
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"].split(":")[0] in pg.get_by_role("alert").inner_text()
    shot(pg, "insight-clv")


def campaign(pg: Any, site: Site, api: Any) -> None:
    segs = [s for s in api.get("/api/v1/segments").json() if (s["size"] or 0) > 0]
    seg = max(segs, key=lambda s: s["size"])
    before = len(api.get("/api/v1/campaigns").json())
    pg.get_by_role("menuitem", name="营销触达").click()
    pg.get_by_role("menuitem", name="营销活动").click()
    pg.get_by_role("button", name=re.compile("新建活动")).click()
    pg.get_by_label("活动名称").fill("护理液促销 e2e")
    pick(pg, "人群", seg["name"])
    pick(pg, "渠道", "e2e-sink", search=False)
    pg.get_by_label("文案（中文）").fill("{{ attributes.nmae }}您好，护理液第二瓶半价")
    pg.get_by_label("对照组比例").fill("20")
    pg.get_by_role("button", name="保存草稿").click()
    # refused by the server: the message on the template field, nothing saved
    pg.locator(".ant-form-item-explain-error", has_text="attributes.nmae").wait_for()
    assert len(api.get("/api/v1/campaigns").json()) == before  # the demo's own campaigns only
    shot(pg, "campaign-form-error")
    pg.get_by_label("文案（中文）").fill("{{ attributes.name }}您好，护理液第二瓶半价")
    save = pg.get_by_role("button", name="保存草稿")
    # Ant Design's button turns its loading state off one render after the page does, and ignores
    # a click until then
    save.and_(pg.locator(":not(.ant-btn-loading)")).wait_for()
    save.click()
    try:
        pg.wait_for_url(re.compile(r"/campaigns/cmp_|/campaigns/[a-z]+_"), timeout=90_000)
    except PlaywrightTimeout:
        raise AssertionError(f"the draft was not saved; the page says {pg.get_by_role('alert').all_inner_texts()}, "
                             f"the API lists {[c['name'] for c in api.get('/api/v1/campaigns').json()]}") from None
    cid = pg.url.rsplit("/", 1)[1]
    assert api.get(f"/api/v1/campaigns/{cid}").json()["status"] == "draft"
    pg.get_by_role("button", name=re.compile(r"启\s?动")).click()
    # the page polls until the run is over
    pg.locator("[data-testid=status][data-status=done]").wait_for(timeout=90_000)
    c = api.get(f"/api/v1/campaigns/{cid}").json()
    p = c["progress"]
    prog = pg.get_by_test_id("campaign-progress")
    stat = prog.locator(".ant-statistic", has_text="目标客户").locator(".ant-statistic-content")
    assert int(re.sub(r"\D", "", stat.inner_text())) == p["targeted"] > 0
    assert p["members"].get("holdout", 0) > 0
    report = api.get(f"/api/v1/campaigns/{cid}/report").json()
    arms = pg.get_by_test_id("arms-table")
    arms.wait_for()
    sent_a = next(a for a in report["arms"] if a["arm"] == "A")["sent"]
    assert sent_a > 0
    assert arms.locator("tr", has_text="版本 A").locator("td").nth(2).inner_text().replace(",", "") == str(sent_a)
    canvas_ok(pg, card(pg, "各版本转化漏斗"))
    if report["uplift"]["available"]:
        canvas_ok(pg, card(pg, "相对对照组的增量（95% 置信区间）"))
    shot(pg, "campaign")


def drop(pg: Any, kind: str, x: float, y: float) -> None:
    """Drag a step type from the palette onto the canvas at (x, y) of the canvas box."""
    pg.get_by_test_id(f"palette-{kind}").drag_to(pg.get_by_test_id("journey-canvas"), target_position={"x": x, "y": y})


def connect(pg: Any, source: str, target: str, handle: str = "") -> None:
    """Drag from a step's output handle to another step's input, with the mouse."""
    src = pg.locator(f"[data-testid=node-{source}] .react-flow__handle.source{handle}").first.bounding_box()
    dst = pg.locator(f"[data-testid=node-{target}] .react-flow__handle.target").first.bounding_box()
    pg.mouse.move(src["x"] + src["width"] / 2, src["y"] + src["height"] / 2)
    pg.mouse.down()
    pg.mouse.move(dst["x"] + dst["width"] / 2, dst["y"] + dst["height"] / 2, steps=12)
    pg.mouse.up()


def journey(pg: Any, site: Site, api: Any) -> None:
    segs = [s for s in api.get("/api/v1/segments").json() if (s["size"] or 0) > 0]
    seg = min(segs, key=lambda s: s["size"])
    pg.get_by_role("menuitem", name="客户旅程").click()
    pg.get_by_role("button", name=re.compile("新建旅程")).click()
    pg.get_by_test_id("journey-canvas").wait_for()
    drop(pg, "entry", 260, 60)
    drop(pg, "wait", 260, 200)
    drop(pg, "send", 260, 340)
    drop(pg, "exit", 260, 480)
    nodes = pg.locator(".react-flow__node")
    assert nodes.count() == 4
    ids = {pg.locator(".react-flow__node").nth(i).get_attribute("data-id") for i in range(4)}
    entry, wait, send, exit_ = (next(i for i in ids if i.startswith(k)) for k in ("entry", "wait", "send", "exit"))
    # configure the entry (a segment) and the message (the sink channel, a text)
    pg.get_by_test_id(f"node-{entry}").click()
    pick(pg, "人群", seg["name"])
    pg.get_by_test_id(f"node-{send}").click()
    pick(pg, "渠道", "e2e-sink", search=False)
    pg.get_by_label("文案（中文）").fill("{{ attributes.name }}您好，欢迎回来")
    pg.get_by_label("旅程名称").fill("回访旅程 e2e")
    # publishing an unconnected graph is refused; the error is drawn on the step it names
    pg.get_by_role("button", name=re.compile(r"发\s?布")).click()
    pg.get_by_test_id("journey-error").wait_for()
    assert pg.locator(".gk-step-error").count() >= 1
    bad = pg.locator(".gk-step-error").first.get_attribute("data-testid").removeprefix("node-")
    assert bad in pg.get_by_test_id("journey-error").inner_text()
    assert api.get("/api/v1/journeys").json() == []
    shot(pg, "journey-invalid")
    connect(pg, entry, wait)
    connect(pg, wait, send)
    connect(pg, send, exit_)
    assert pg.locator(".react-flow__edge").count() == 3
    pg.get_by_role("button", name=re.compile(r"校\s?验")).click()
    pg.get_by_text("校验通过：4 个步骤，3 条连线").wait_for()
    pg.get_by_role("button", name=re.compile(r"发\s?布")).click()
    pg.locator("[data-testid=status][data-status=active]").wait_for()
    jid = pg.url.rsplit("/", 1)[1]
    saved = api.get(f"/api/v1/journeys/{jid}").json()
    assert saved["version"] == 1 and saved["status"] == "active"
    assert {n["id"] for n in saved["definition"]["graph"]["nodes"]} == ids
    assert {(e["source"], e["target"]) for e in saved["definition"]["graph"]["edges"]} == {
        (entry, wait), (wait, send), (send, exit_)}
    # the runner admits the segment's members; the canvas shows the per-step counts it polls
    from goldkey.activate.journey_engine import JourneyEngine

    JourneyEngine.from_goldkey(site.gk).run_once()
    stats = {n["node_id"]: n for n in api.get(f"/api/v1/journeys/{jid}/stats").json()["nodes"]}
    assert stats[wait]["current"] == seg["size"]
    badge = pg.get_by_test_id(f"stats-{wait}")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not badge.count() or badge.get_attribute("data-current") != str(
            stats[wait]["current"])):
        pg.wait_for_timeout(500)
    assert badge.get_attribute("data-current") == str(stats[wait]["current"])
    shot(pg, "journey")
