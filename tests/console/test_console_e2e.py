"""The web console in a real browser (Chromium through Playwright) against a real Goldkey server.

A small demo market (two brands, so two workspaces) is loaded through the real paths (importers and
the tracking API over HTTP, then traits, tags, RFM and segments through the REST API); a server then
serves the API and the built console on a free port. The walk: sign in (a wrong token first), the
overview's charts, the language switch, a customer found by phone and the 360° profile, a segment
built by clicking whose live size matches the estimate API, saved and computed, the tags page and
the workspace switcher. Screenshots of each page go to tests/console/screenshots/.

Needs the console build (``make console``) and /usr/bin/chromium (``make chromium``); skips only
when Chromium cannot start.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from rich.console import Console

from goldkey.api.console import dist_dir
from goldkey.app import create_app
from goldkey.demo.run import BackgroundServer, BrandCredentials, run_demo
from goldkey.runtime import Goldkey
from goldkey.settings import Settings
from goldkey.store.operational import identities

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
SHOTS = Path(__file__).parent / "screenshots"


@dataclass
class Site:
    url: str
    gk: Goldkey
    brands: list[BrandCredentials]
    demo_user: tuple[str, str] | None = None  # e-mail, password: admin of both workspaces

    def api(self, token: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (make chromium installs it)")
    with sync_api.sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        except Exception as exc:  # noqa: BLE001 - any launch failure means the browser cannot run here
            pytest.skip(f"Chromium cannot start here: {str(exc).splitlines()[0]}")
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    if not (dist_dir() / "index.html").is_file():
        pytest.fail(f"the console is not built ({dist_dir()} has no index.html): run `make console`")
    tmp = tmp_path_factory.mktemp("console-e2e")
    settings = Settings(data_dir=tmp / "data", port=0)
    log = (tmp / "demo.log").open("w")
    try:
        result = run_demo(settings, customers=200, events=8_000, seed=11, serve_forever=False,
                          console=Console(file=log, width=200))
    finally:
        log.close()
    gk = Goldkey.open(settings)
    server = BackgroundServer(create_app(gk=gk), "127.0.0.1", 0)
    try:
        assert result.demo_user is not None
        yield Site(server.start(), gk, result.brands, result.demo_user)
    finally:
        server.stop()
        gk.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(locale="zh-CN", viewport={"width": 1400, "height": 900})
    pg = ctx.new_page()
    pg.set_default_timeout(60_000)  # a loaded 2-core machine (two test workers) can take seconds per step
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.errors = errors
    try:
        yield pg
    finally:
        ctx.close()


def shot(pg: Any, name: str) -> None:
    SHOTS.mkdir(exist_ok=True)
    pg.evaluate("window.scrollTo(0, 0)")
    pg.wait_for_timeout(600)  # chart animations (400 ms)
    pg.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def digits(text: str) -> int:
    return int(re.sub(r"\D", "", text))


def sign_in(pg: Any, site: Site, token: str) -> None:
    pg.get_by_role("tab", name="令牌登录").click()  # the e-mail and password tab comes first
    pg.get_by_label("管理员令牌").fill(token)
    pg.locator("form button[type=submit]").click()


def pick(pg: Any, label: str, text: str, *, search: bool = True, nth: int = -1) -> None:
    """Choose ``text`` in the Ant Design select labelled ``label`` (the last one on the page by default)."""
    box = pg.get_by_label(label, exact=True).nth(nth)
    for attempt in range(3):
        try:
            box.click(force=True)  # the selected value's label lies over the input
            break
        except Exception as exc:  # noqa: BLE001 - Playwright's error: a drawer still sliding in
            if "outside of the viewport" not in str(exc) or attempt == 2:
                raise
            settled(pg)
            pg.wait_for_timeout(300)
    if search:
        box.fill(text)
    pg.locator(".ant-select-dropdown:visible .ant-select-item-option", has_text=text).first.click()


def wait_size(pg: Any, previous: str | None = None) -> int:
    """The live estimate's size, once it differs from ``previous`` (and no request is pending)."""
    loc = pg.get_by_test_id("estimate-size")
    loc.wait_for(state="attached")
    if previous is not None:
        pg.wait_for_function(
            "p => { const e = document.querySelector('[data-testid=estimate-size]');"
            " return e && e.dataset.size !== p }",
            arg=previous)
    return int(loc.get_attribute("data-size"))


def test_console_walk(page: Any, site: Site) -> None:
    try:
        walk(page, site)
    except Exception:
        shot(page, "failure")  # what the browser showed when the walk failed
        raise


def walk(page: Any, site: Site) -> None:
    pg, eyecare, operator = page, site.brands[0], site.brands[1]
    api = site.api(eyecare.admin_token)

    # sign in: zh-CN is the default for a Chinese browser; a wrong token is refused clearly
    pg.goto(site.url + "/")
    pg.wait_for_url(re.compile(r"/sign-in$"))
    assert pg.locator("html").get_attribute("lang") == "zh-CN"
    shot(pg, "sign-in")
    sign_in(pg, site, "gka_not-a-real-token")
    assert "不是有效的管理员令牌" in pg.get_by_role("alert").inner_text()
    sign_in(pg, site, eyecare.admin_token)
    pg.wait_for_url(site.url + "/")

    # overview: KPIs equal the API's figures, the charts render
    pg.get_by_text("近 365 天").click()
    ov = api.get("/api/v1/console/overview", params={"days": 365}).json()
    kpi = pg.get_by_test_id("kpi-active")
    pg.wait_for_function("n => document.querySelector('[data-testid=kpi-active] .ant-statistic-content')"
                         "?.innerText.replace(/\\D/g, '') === String(n)", arg=ov["active"])
    assert digits(kpi.locator(".ant-statistic-content").inner_text()) == ov["active"] > 0
    assert digits(pg.get_by_test_id("kpi-customers").locator(".ant-statistic-content").inner_text()) == ov["customers"]
    for title in ("月度销售额与订单数（近 12 个月）", "新客与老客（近 365 天）", "客户价值分层（RFM）", "RFM 客户分群",
                  "生命周期阶段"):
        card = pg.locator(".ant-card", has=pg.get_by_text(title, exact=True))
        canvas = card.locator(".gk-chart canvas").first
        canvas.wait_for()
        assert canvas.bounding_box()["height"] > 100, title
    shot(pg, "overview")

    # language switch: English everywhere, remembered
    pg.get_by_text("EN", exact=True).click()
    pg.get_by_role("heading", name="Overview").wait_for()
    assert pg.locator("html").get_attribute("lang") == "en"
    assert pg.get_by_text("RFM groups", exact=True).is_visible()
    shot(pg, "overview-en")
    pg.reload()
    pg.get_by_role("heading", name="Overview").wait_for()
    pg.get_by_text("中文", exact=True).click()
    pg.get_by_role("heading", name="概览").wait_for()

    # a customer by phone -> the 360° profile
    with site.gk.engine.connect() as c:
        pid, phone = c.execute(sa.select(identities.c.profile_id, identities.c.id_value).where(
            identities.c.workspace_id == eyecare.workspace_id, identities.c.id_type == "phone")
            .order_by(identities.c.id_value).limit(1)).one()
    want = api.get(f"/api/v1/profiles/{pid}").json()
    pg.get_by_role("menuitem", name="客户").click()
    pg.get_by_label("标识值").fill(phone)
    pg.get_by_role("button", name=re.compile(r"查\s*找")).click()
    pg.wait_for_url(re.compile(r"/customers/prf_"))
    assert pg.url.endswith("/" + want["profile_id"])
    assert pg.get_by_test_id("profile-name").inner_text() == (want["attributes"].get("name") or want["profile_id"])
    assert pg.locator(".ant-card", has_text="身份标识").get_by_text(phone).is_visible()
    for title in ("基本属性", "标签", "模型评分", "近期行为", "订单概况", "合并记录", "授权与同意", "客户反馈"):
        assert pg.get_by_text(title, exact=True).first.is_visible(), title
    shot(pg, "profile")
    pg.go_back()
    pg.get_by_label("标识值").fill("13800000001")
    pg.get_by_role("button", name=re.compile(r"查\s*找")).click()
    pg.get_by_role("status").get_by_text("没有手机号为").wait_for()

    # the segment builder, by clicking: city = 上海 AND NOT (viewed a lens product at least twice, ever)
    pg.get_by_role("menuitem", name="人群").click()
    pg.get_by_role("button", name=re.compile("新建人群")).click()
    pg.get_by_role("button", name="属性条件").click()
    pick(pg, "字段", "城市")
    pg.get_by_label("值", exact=True).fill("上海")
    rule: dict[str, Any] = {"kind": "and", "conditions": [
        {"kind": "attribute", "field": "attributes.city", "op": "eq", "value": "上海"}]}
    size1 = wait_size(pg)
    assert size1 == api.post("/api/v1/segments/estimate", json={"rule": rule}).json()["size"] > 0

    pg.get_by_role("button", name="行为条件").click()
    pick(pg, "行为事件", "Product Viewed")
    pick(pg, "时间范围", "全部历史", search=False)
    pg.get_by_label("次", exact=True).fill("2")
    pg.get_by_role("button", name="属性筛选").click()
    pick(pg, "事件属性", "category")
    pg.get_by_label("值", exact=True).nth(1).fill("lens")
    event = {"kind": "event", "event": "Product Viewed", "count": {"op": "at_least", "n": 2},
             "where": [{"property": "category", "op": "eq", "value": "lens", "type": "string"}]}
    rule["conditions"].append(event)
    size2 = wait_size(pg, str(size1))
    assert size2 == api.post("/api/v1/segments/estimate", json={"rule": rule}).json()["size"]
    pg.get_by_role("switch", name="排除").nth(1).click()
    rule["conditions"][1] = {"kind": "not", "condition": event}
    size3 = wait_size(pg, str(size2))
    assert size3 == api.post("/api/v1/segments/estimate", json={"rule": rule}).json()["size"] == size1 - size2
    # the explanation of an example member: every clause marked
    assert pg.locator(".gk-explain [aria-label='满足']").count() >= 3
    shot(pg, "segment-builder")

    pg.get_by_label("人群名称").fill("上海·未多次看镜片 e2e")
    pg.get_by_role("button", name=re.compile(r"保存并计算")).click()
    pg.wait_for_url(re.compile(r"/segments/seg_"))
    sid = pg.url.rsplit("/", 1)[1]
    saved = api.get(f"/api/v1/segments/{sid}").json()
    assert saved["rule"]["conditions"][1]["kind"] == "not" and saved["size"] == size3
    history = api.get(f"/api/v1/segments/{sid}/history").json()
    assert history and history[-1]["size"] == size3  # the compute on save (a scheduler may add one)
    pg.locator(".ant-card", has_text="人数变化").locator("canvas").first.wait_for()
    if size3:  # the members table loads after the chart: wait for its total, do not sample it once
        pg.get_by_text(f"共 {size3} 条").wait_for()
    shot(pg, "segment")

    # tags and traits with coverage
    pg.get_by_role("menuitem", name="标签与特征").click()
    cov = api.get("/api/v1/tags/rfm_group/coverage").json()
    row = pg.locator("tr", has_text="rfm_group")
    row.get_by_text(f"{cov['tagged']} · ").wait_for()
    pg.get_by_role("tab", name="计算特征").click()
    pg.locator("tr", has_text="lens_orders").wait_for()
    pg.get_by_role("tab", name="标签").click()
    shot(pg, "tags")

    # a second workspace, then the switcher between the two
    # Under a loaded CI machine a click on the menu while it still animates in can be swallowed (seen 3
    # times: the menu stayed open, no navigation): open it and click again until the page changes
    for attempt in range(4):
        if not pg.locator(".ant-dropdown:visible").count():
            pg.get_by_test_id("workspace-switcher").click()
        item = pg.locator(".ant-dropdown:visible").get_by_text("登录其他工作空间")
        item.wait_for()
        pg.wait_for_timeout(300)  # the opening animation
        item.click()
        try:
            pg.wait_for_url(re.compile(r"/sign-in\?add=1"), timeout=8_000)
            break
        except Exception:  # noqa: BLE001 - retried; the last attempt raises
            if attempt == 3:
                raise
    sign_in(pg, site, operator.admin_token)
    pg.wait_for_url(site.url + "/")
    assert operator.name in pg.get_by_test_id("workspace-switcher").inner_text()
    menu = pg.locator(".ant-dropdown:visible")
    # the menu opens with an animation (and may close again as the page re-renders after sign-in):
    # read it once both workspaces are listed
    items = open_menu_items(pg, pg.get_by_test_id("workspace-switcher"), menu, 2)
    assert items == [eyecare.name, operator.name + " ✓"], items
    shot(pg, "workspace-switcher")
    menu.get_by_role("menuitem", name=eyecare.name, exact=True).click()
    pg.wait_for_function("n => document.querySelector('[data-testid=workspace-switcher]').innerText.includes(n)",
                         arg=eyecare.name)
    stored = pg.evaluate("JSON.parse(localStorage.getItem('goldkey.sessions')).map(s => s.workspace_id)")
    assert sorted(stored) == sorted([eyecare.workspace_id, operator.workspace_id])
    assert pg.errors == []


def test_settings_campaign_uplift_and_messages(page: Any, site: Site) -> None:
    try:
        settings_walk(page, site)
    except Exception:
        shot(page, "failure-settings")
        raise


def settled(pg: Any) -> None:
    """Wait until no drawer or dialog is still sliding in: Ant Design's motion classes are gone and
    every open drawer lies inside the window (a check made right after the click can come before
    the motion class is set; until the drawer is in, its inputs lie outside the viewport)."""
    pg.wait_for_function("() => !document.querySelector('.ant-drawer [class*=-motion-], "
                         ".ant-modal-wrap [class*=-motion-], .ant-drawer-content-wrapper[class*=motion], "
                         ".ant-modal[class*=zoom]') && [...document.querySelectorAll("
                         "'.ant-drawer-open .ant-drawer-content-wrapper')].every(e => { "
                         "const r = e.getBoundingClientRect(); "
                         "return r.left >= -1 && r.right <= window.innerWidth + 1 })")


def settings_walk(pg: Any, site: Site) -> None:
    """The overview's recent campaigns against the report API, the messages on a profile against the
    message log, and the channels and settings page: a channel created and edited with a write-only
    credential, a refusal on the field it names, test sends, a write key created (shown once, works),
    then revoked (refused at once), the send policy saved, the identity rules shown and edited."""
    eyecare = site.brands[0]
    api = site.api(eyecare.admin_token)
    pg.goto(site.url + "/")
    pg.wait_for_url(re.compile(r"/sign-in$"))
    sign_in(pg, site, eyecare.admin_token)
    pg.wait_for_url(site.url + "/")

    # overview: the recent campaigns (the demo's closed loop ran them) with the report's uplift
    ran = sorted((c for c in api.get("/api/v1/campaigns").json() if c["run"] > 0),
                 key=lambda c: c["created_at"], reverse=True)[:6]
    assert ran, "the demo runs campaigns"
    card = pg.get_by_test_id("recent-campaigns")
    for c in ran:
        card.get_by_role("link", name=c["name"], exact=True).wait_for()
    shown = {float(x.get_attribute("data-uplift")) for x in card.get_by_test_id("campaign-uplift").all()}
    want = set()
    for c in ran:
        rep = api.get(f"/api/v1/campaigns/{c['campaign_id']}/report")
        if rep.status_code == 200 and rep.json()["uplift"]["available"]:
            want.add(rep.json()["uplift"]["treated"]["uplift"])
    assert shown == want and want, (shown, want)
    card.locator(".gk-chart canvas").first.wait_for()
    pg.get_by_test_id("recent-campaigns").scroll_into_view_if_needed()
    shot(pg, "overview-campaigns")

    # a profile's messages equal the message log's (newest first, outcomes as tags)
    pid = api.get("/api/v1/messages", params={"limit": 1}).json()["messages"][0]["profile_id"]
    log = api.get("/api/v1/messages", params={"profile_id": pid, "limit": 50}).json()["messages"]
    pg.goto(f"{site.url}/customers/{pid}")
    msgs = pg.get_by_test_id("profile-messages")
    msgs.locator("tbody tr.ant-table-row").first.wait_for()
    assert msgs.locator("tbody tr.ant-table-row").count() == min(len(log), 8)
    delivered = sum(1 for m in log if m["delivered_at"])
    assert f"送达 {delivered}" in msgs.locator(".ant-card-head").inner_text()
    msgs.scroll_into_view_if_needed()
    shot(pg, "profile-messages")

    # channels: the list equals the API's; a webhook created with a signing secret that never comes back
    pg.get_by_role("menuitem", name="渠道与设置").click()
    pg.get_by_role("heading", name="渠道与设置").wait_for()
    channels = api.get("/api/v1/channels").json()
    table = pg.get_by_test_id("channels-table")
    for ch in channels:
        table.get_by_text(ch["channel_id"]).wait_for()
    pg.get_by_role("button", name="新建渠道").click()
    form = pg.get_by_test_id("channel-form")
    form.wait_for()
    settled(pg)
    pick(pg, "渠道类型", "Webhook")
    form.get_by_label("渠道名称").fill("e2e webhook")
    form.get_by_label("接收地址（URL）").fill("ftp://127.0.0.1/hook")
    form.get_by_label("签名密钥").fill("s3cret-e2e-value")
    form.get_by_role("button", name=re.compile(r"保\s*存")).click()
    # the server refuses the URL: the message sits on that field, nothing is saved
    form.locator(".ant-form-item-has-error", has=pg.get_by_label("接收地址（URL）")).wait_for()
    assert not any(c["name"] == "e2e webhook" for c in api.get("/api/v1/channels").json())
    shot(pg, "channel-refused")
    form.get_by_label("接收地址（URL）").fill("http://127.0.0.1:9/hook")
    form.get_by_role("button", name=re.compile(r"保\s*存")).click()
    row = table.locator("tr", has_text="e2e webhook")
    row.wait_for()
    made = next(c for c in api.get("/api/v1/channels").json() if c["name"] == "e2e webhook")
    assert made["secrets_set"] == ["signing_secret"] and made["config"]["url"] == "http://127.0.0.1:9/hook"
    assert "签名密钥: 已设置" in row.inner_text()
    assert "s3cret-e2e-value" not in pg.content()
    shot(pg, "channels")

    # edit: the stored secret shows as set and an empty field keeps it
    row.get_by_role("button", name="编辑渠道 e2e webhook").click()
    form = pg.get_by_test_id("channel-form")
    form.wait_for()
    settled(pg)
    assert form.get_by_label("渠道名称").input_value() == "e2e webhook"
    assert form.get_by_label("接收地址（URL）").input_value() == "http://127.0.0.1:9/hook"
    assert form.get_by_label("签名密钥").input_value() == ""
    form.get_by_text("已设置").first.wait_for()
    shot(pg, "channel-edit")
    form.get_by_label("渠道名称").fill("e2e webhook 2")
    form.get_by_role("button", name=re.compile(r"保\s*存")).click()
    table.locator("tr", has_text="e2e webhook 2").wait_for()
    edited = api.get("/api/v1/channels").json()
    edited_ch = next(c for c in edited if c["channel_id"] == made["channel_id"])
    assert edited_ch["name"] == "e2e webhook 2" and edited_ch["secrets_set"] == ["signing_secret"]
    store = site.gk.sender.channels
    assert store.keys.decrypt(store._row(eyecare.workspace_id, made["channel_id"]).secrets) == {
        "signing_secret": "s3cret-e2e-value"}

    # a test send: refused by the closed port (the reason shown), accepted by the demo's sink
    table.locator("tr", has_text="e2e webhook 2").get_by_role("button", name=re.compile("发送测试")).click()
    dialog = pg.get_by_role("dialog")
    dialog.get_by_label(re.compile("发送至")).fill("prf_test")
    dialog.get_by_role("button", name=re.compile(r"发\s*送$")).click()
    dialog.get_by_test_id("test-result").wait_for()
    assert "未发送成功" in dialog.get_by_test_id("test-result").inner_text()
    shot(pg, "channel-test")
    dialog.get_by_role("button", name=re.compile(r"取\s*消")).click()
    sink = next(c for c in channels if c["kind"] == "sink")
    table.locator("tr", has_text=sink["channel_id"]).get_by_role("button", name=re.compile("发送测试")).click()
    dialog = pg.get_by_role("dialog")
    dialog.get_by_label(re.compile("发送至")).fill("+8613900000000")
    dialog.get_by_role("button", name=re.compile(r"发\s*送$")).click()
    dialog.get_by_text("测试消息已发送").wait_for()
    dialog.get_by_role("button", name=re.compile(r"取\s*消")).click()

    # keys: the list equals the API's; a new write key is shown once and works, then is revoked
    pg.get_by_role("tab", name="API 密钥").click()
    keys = pg.get_by_test_id("keys-table")
    live = [k for k in api.get("/api/v1/workspace/keys").json() if not k["revoked_at"]]
    keys.locator("tbody tr.ant-table-row").nth(len(live) - 1).wait_for()
    assert keys.locator("tbody tr.ant-table-row").count() == len(live)
    pg.get_by_role("button", name="新建写入密钥").click()
    pg.get_by_label("备注").fill("e2e shop")
    # the dialog zooms in: a click during the animation can be lost on a loaded machine (the
    # screenshot of a failed run showed the dialog still open, filled, and no error), so the click
    # waits for it to settle; should the click still be lost (the dialog open, no secret, no
    # error), Enter in the label field runs the same create once
    pg.wait_for_function("() => !document.querySelector('.ant-modal.ant-zoom-appear, .ant-modal.ant-zoom-enter')")
    pg.get_by_role("dialog").get_by_role("button", name=re.compile(r"创\s*建")).click()
    shown = pg.get_by_test_id("new-secret").or_(pg.locator(".ant-message-error"))
    try:
        shown.first.wait_for(timeout=10_000)
    except Exception:
        dialog = pg.get_by_role("dialog")
        if pg.get_by_label("备注").is_visible() and not dialog.locator(".ant-btn-loading").count():
            pg.get_by_label("备注").press("Enter")  # not created, not creating: the click was lost
    try:
        shown.first.wait_for()
    except Exception:
        shot(pg, "key-create-failure")
        raise
    if pg.locator(".ant-message-error").count():
        shot(pg, "key-create-failure")
        raise AssertionError("creating a write key failed: " + pg.locator(".ant-message-error").first.inner_text())
    secret = pg.get_by_test_id("new-secret").inner_text().strip()
    assert secret.startswith("gkw_")
    shot(pg, "key-created")
    track = {"userId": "e2e-key-user", "event": "Key Checked", "messageId": "e2e-key-1"}
    assert httpx.post(site.url + "/v1/track", json=track, auth=(secret, "")).status_code == 200
    pg.get_by_role("button", name="我已保存").click()
    pg.get_by_test_id("new-secret").wait_for(state="detached")  # gone from the page once closed
    assert keys.locator("tr", has_text="first admin token").get_by_text("当前登录所用").is_visible()
    row = keys.locator("tr", has_text="e2e shop")
    assert secret[:8] in row.inner_text() and secret not in pg.content()
    row.get_by_role("button", name=re.compile("吊销密钥")).click()
    pg.locator(".ant-popconfirm:visible").get_by_role("button", name=re.compile(r"吊\s*销")).click()
    row.wait_for(state="detached")
    assert httpx.post(site.url + "/v1/track", json={**track, "messageId": "e2e-key-2"},
                      auth=(secret, "")).status_code == 401
    pg.get_by_role("switch", name="显示已吊销").click()
    keys.locator("tr", has_text="e2e shop").get_by_text("已吊销").wait_for()
    shot(pg, "keys")

    # the send policy: an SMS cap, quiet hours and an exempt purpose, saved through the form
    before = api.get("/api/v1/send-policy").json()
    pg.get_by_role("tab", name="发送策略").click()
    pg.get_by_label("短信 每天上限").fill("2")
    assert before["quiet_hours"] is None  # the demo turns them off; on again, from 22:30 to the default end
    pg.get_by_role("switch", name="免打扰时段").click()
    start = pg.get_by_role("textbox", name="开始", exact=True)
    start.click()
    start.fill("22:30")
    start.press("Tab")  # Enter would submit the form
    exempt = pg.get_by_role("combobox", name="豁免的消息用途")
    exempt.click()
    exempt.fill("service")
    exempt.press("Enter")
    pg.get_by_role("button", name="保存发送策略").click()
    pg.get_by_text("发送策略已保存").wait_for()
    after = api.get("/api/v1/send-policy").json()
    assert after["caps"]["sms"] == {"day": 2, "week": None}
    assert after["caps"]["*"] == before["caps"]["*"] and after["timezone"] == before["timezone"]
    assert after["quiet_hours"] == {"start": "22:30:00", "end": "08:00:00"}
    assert after["exempt_purposes"] == [*before["exempt_purposes"], "service"]
    shot(pg, "send-policy")

    # the identity rules as configured
    pg.get_by_role("tab", name="身份识别规则").click()
    rules = api.get("/api/v1/workspace/identity-rules").json()
    prio = pg.get_by_test_id("identity-priority")
    prio.locator("tbody tr.ant-table-row").nth(len(rules["priority"]) - 1).wait_for()
    assert prio.locator("tbody tr.ant-table-row").count() == len(rules["priority"])
    shot(pg, "identity-rules")
    # edited in the page: phone one place up, e-mail limit 4, a blocked value added
    pg.get_by_role("button", name="编辑规则").click()
    editor = pg.get_by_test_id("identity-editor")
    editor.get_by_role("button", name="上移 手机号").click()
    editor.get_by_label("邮箱 每位客户最多").fill("4")
    blocked = editor.get_by_role("combobox", name="屏蔽值")
    blocked.fill("guest")
    blocked.press("Enter")
    shot(pg, "identity-edit")
    editor.get_by_role("button", name="保存规则").click()
    pg.get_by_test_id("identity-blocked").get_by_text("guest", exact=True).wait_for()
    saved = api.get("/api/v1/workspace/identity-rules").json()
    i = rules["priority"].index("phone")
    want_prio = [*rules["priority"][:i - 1], "phone", rules["priority"][i - 1], *rules["priority"][i + 1:]]
    assert saved["priority"] == want_prio
    assert saved["limits"] == {**rules["limits"], "email": 4}
    assert saved["blocked_values"] == [*rules["blocked_values"], "guest"]
    assert saved["blocked_by_type"] == rules["blocked_by_type"] and saved["custom"] == rules["custom"]

    # and in English
    pg.get_by_text("EN", exact=True).click()
    pg.get_by_role("tab", name="Channels").click()
    pg.get_by_role("heading", name="Channels & settings").wait_for()
    pg.get_by_test_id("channels-table").get_by_text("e2e webhook 2").wait_for()
    shot(pg, "settings-en")
    assert pg.errors == []


def test_users_sign_in_and_roles(page: Any, site: Site) -> None:
    try:
        users_walk(page, site)
    except Exception:
        shot(page, "failure-users")
        raise


def sign_in_user(pg: Any, email: str, password: str) -> None:
    pg.get_by_label("邮箱").fill(email)
    pg.get_by_label("密码", exact=True).fill(password)
    pg.locator("form button[type=submit]").click()


def open_menu_items(pg: Any, trigger: Any, menu: Any, n: int) -> list[str]:
    """Open a dropdown and return the texts of its first ``n`` items. A dropdown opened while the
    page re-renders (the session's workspaces arriving just after sign-in) can close again, or
    be read between its items' renders (once read as no items at all): it is opened again then."""
    items: list[str] = []
    for _ in range(3):
        trigger.click()
        try:
            menu.get_by_role("menuitem").nth(n - 1).wait_for(timeout=5000)
            items = menu.get_by_role("menuitem").all_inner_texts()[:n]
        except Exception:  # noqa: BLE001 - Playwright's timeout: not open, try again
            items = []
        if len(items) == n:
            return items
        pg.keyboard.press("Escape")
        pg.wait_for_timeout(300)
    return items


def users_walk(pg: Any, site: Site) -> None:
    """Sign in with e-mail and password as the demo user (admin of both workspaces, listed with the
    role in the switcher), add an analyst in Settings -> Users (the initial password shown once),
    sign out (the session ends on the server), sign in as the analyst: actions beyond the role are
    not offered, and the API refuses them anyway."""
    assert site.demo_user is not None
    email, password = site.demo_user
    eyecare, operator = site.brands[0], site.brands[1]
    pg.goto(site.url + "/")
    pg.wait_for_url(re.compile(r"/sign-in$"))
    sign_in_user(pg, email, "not the password")
    assert "邮箱或密码错误" in pg.get_by_role("alert").inner_text()
    sign_in_user(pg, email, password)
    pg.wait_for_url(site.url + "/")
    assert pg.get_by_test_id("current-role").inner_text() == "管理员"
    menu = pg.locator(".ant-dropdown:visible")
    items = open_menu_items(pg, pg.get_by_test_id("workspace-switcher"), menu, 2)
    assert sorted(items) == sorted([f"{eyecare.name} · 管理员" + (" ✓" if eyecare.name in items[0] else ""),
                                    f"{operator.name} · 管理员" + (" ✓" if operator.name in items[0] else "")]), items
    shot(pg, "users-switcher")
    menu.get_by_role("menuitem", name=re.compile(re.escape(eyecare.name))).click()
    pg.wait_for_function("n => document.querySelector('[data-testid=workspace-switcher]').innerText.includes(n)",
                         arg=eyecare.name)

    # settings -> users: add an analyst; the initial password is shown once
    pg.get_by_role("menuitem", name="渠道与设置").click()
    pg.get_by_role("tab", name="用户").click()
    table = pg.get_by_test_id("users-table")
    table.get_by_text(email).wait_for()
    pg.get_by_role("button", name=re.compile("添加用户")).click()
    form = pg.get_by_test_id("invite-form")
    form.wait_for()
    settled(pg)
    form.get_by_label("邮箱").fill("analyst@e2e.example")
    form.get_by_label("姓名").fill("E2E Analyst")
    pick(pg, "角色", "分析师", search=False)
    pg.get_by_role("dialog").get_by_role("button", name=re.compile("添加用户")).click()
    initial = pg.get_by_test_id("initial-password").inner_text().strip()
    assert len(initial) >= 10
    shot(pg, "user-invited")
    pg.get_by_role("button", name="我已转交").click()
    table.get_by_text("analyst@e2e.example").wait_for()
    api = site.api(eyecare.admin_token)
    listed = {u["email"]: u["role"] for u in api.get("/api/v1/workspace/users").json()}
    assert listed == {email: "admin", "analyst@e2e.example": "analyst"}
    shot(pg, "users")

    # sign out: the session ends on the server too
    token = pg.evaluate("JSON.parse(localStorage.getItem('goldkey.sessions'))[0].token")
    assert token.startswith("gks_")
    pg.get_by_test_id("workspace-switcher").click()
    pg.locator(".ant-dropdown:visible").get_by_role("menuitem", name=re.compile("退出")).click()
    pg.wait_for_url(re.compile(r"/sign-in$"))
    me = httpx.get(site.url + "/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 401
    assert pg.evaluate("localStorage.getItem('goldkey.sessions')") == "[]"

    # the analyst: reads, but no create buttons, no admin tabs; the API refuses a segment
    sign_in_user(pg, "analyst@e2e.example", initial)
    pg.wait_for_url(site.url + "/")
    assert pg.get_by_test_id("current-role").inner_text() == "分析师"
    pg.get_by_role("menuitem", name="人群").click()
    pg.get_by_role("heading", name="人群").wait_for()
    assert pg.get_by_role("button", name=re.compile("新建人群")).count() == 0
    for menu, heading, button in (("营销活动", "营销活动", "新建活动"), ("客户旅程", "客户旅程", "新建旅程")):
        if not pg.get_by_role("menuitem", name=menu).is_visible():
            pg.get_by_role("menuitem", name="营销触达").click()
        pg.get_by_role("menuitem", name=menu).click()
        pg.get_by_role("heading", name=heading).wait_for()
        assert pg.get_by_role("button", name=re.compile(button)).count() == 0, button
    pg.get_by_role("menuitem", name="渠道与设置").click()
    pg.get_by_role("tab", name="发送策略").wait_for()
    assert pg.get_by_role("tab").all_inner_texts() == ["发送策略", "身份识别规则"]
    assert pg.get_by_role("button", name="保存发送策略").is_disabled()
    pg.goto(site.url + "/campaigns/new")
    pg.get_by_test_id("role-gate").wait_for()
    shot(pg, "role-gate")
    token = pg.evaluate("JSON.parse(localStorage.getItem('goldkey.sessions'))[0].token")
    r = httpx.post(site.url + "/api/v1/segments", json={"name": "x", "rule": {"kind": "attribute",
                   "field": "profile.origin", "op": "is_set"}},
                   headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 403 and "marketer" in r.json()["error"]
    assert pg.errors == []



# -- accessibility basics -------------------------------------------------------------------------

# every visible form control and the accessible name assistive technology would read for it
# (its <label>s, aria-labelledby, aria-label or title: a placeholder alone is not a label)
UNLABELLED_JS = """() => {
  const named = el => {
    if (el.labels && [...el.labels].some(l => l.innerText.trim())) return true;
    const by = el.getAttribute('aria-labelledby');
    if (by && by.split(/\\s+/).some(id => (document.getElementById(id)?.innerText || '').trim())) return true;
    return !!((el.getAttribute('aria-label') || '').trim() || (el.getAttribute('title') || '').trim());
  };
  const visible = el => { const r = el.getBoundingClientRect(); return r.width > 0 && r.height > 0; };
  return [...document.querySelectorAll('input, select, textarea')]
    .filter(el => el.type !== 'hidden' && visible(el) && !named(el))
    .map(el => `${el.tagName.toLowerCase()}#${el.id || '?'}[${el.className}] in "${
      (el.closest('.ant-form-item, .ant-card, section, main')?.innerText || '').slice(0, 60)}"`);
}"""

# text whose colour contrast against its effective background is under WCAG 2.1 AA: 4.5:1, or 3:1
# for large text (24 px, or 18.66 px bold); the background is the nearest opaque ancestor's
CONTRAST_JS = """() => {
  const rgba = s => { const m = s.match(/[\\d.]+/g) || []; return m.map(Number).concat([1]).slice(0, 4); };
  const lin = v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
  const lum = ([r, g, b]) => 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b);
  const over = (fg, bg) => [0, 1, 2].map(i => fg[i] * fg[3] + bg[i] * (1 - fg[3]));
  const background = el => {
    const stack = [];
    for (let e = el; e; e = e.parentElement) {
      const c = rgba(getComputedStyle(e).backgroundColor);
      if (c[3] > 0) { stack.push(c); if (c[3] >= 1) break; }
    }
    let bg = [255, 255, 255];
    for (const c of stack.reverse()) bg = over(c, bg);
    return bg;
  };
  const bad = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const seen = new Set();
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const el = n.parentElement;
    if (!el || seen.has(el) || !n.textContent.trim()) continue;
    seen.add(el);
    const r = el.getBoundingClientRect(), cs = getComputedStyle(el);
    if (r.width === 0 || r.height === 0 || cs.visibility === 'hidden' || Number(cs.opacity) === 0) continue;
    if (el.closest('[aria-hidden=true], .ant-tooltip, .ant-select-selection-placeholder, input, textarea, canvas, ' +
                   '.ant-btn:disabled, .ant-btn-disabled, [disabled], .ant-input-disabled, .ant-select-disabled, ' +
                   '.ant-steps-item-wait, .ant-pagination-disabled, .ant-empty-description')) continue;
    const bg = background(el), fg = over(rgba(cs.color), bg);
    const L1 = lum(fg), L2 = lum(bg), ratio = (Math.max(L1, L2) + 0.05) / (Math.min(L1, L2) + 0.05);
    const size = parseFloat(cs.fontSize), bold = Number(cs.fontWeight) >= 700;
    const need = (size >= 24 || (bold && size >= 18.66)) ? 3 : 4.5;
    if (ratio < need) bad.push(`${ratio.toFixed(2)} < ${need}: "${n.textContent.trim().slice(0, 40)}" ` +
                              `(${cs.color} on rgb(${bg.map(Math.round)}))`);
  }
  return bad;
}"""


def test_accessibility_basics(page: Any, site: Site) -> None:
    """Keyboard only: the sign-in form is filled and sent without a mouse. On every main page, each
    visible form control has an accessible name, and text meets WCAG AA contrast."""
    pg = page
    assert site.demo_user is not None
    email, password = site.demo_user
    pg.goto(site.url + "/sign-in")
    pg.get_by_label("邮箱").wait_for()
    assert pg.evaluate("document.activeElement && document.activeElement.type") == "email"  # focus starts there
    pg.keyboard.type(email)
    pg.keyboard.press("Tab")
    assert pg.evaluate("document.activeElement && document.activeElement.type") == "password"
    pg.keyboard.type(password)
    pg.keyboard.press("Enter")
    pg.wait_for_url(site.url + "/")
    # the header's controls are reachable with Tab and show where the focus is
    pg.keyboard.press("Tab")
    assert pg.evaluate("document.activeElement !== document.body")

    problems: dict[str, list[str]] = {}
    for path in ("/", "/customers", "/segments", "/segments/new", "/tags", "/insight/rfm",
                 "/insight/churn", "/insight/reports", "/campaigns", "/campaigns/new", "/journeys/new", "/settings"):
        pg.goto(site.url + path)
        pg.wait_for_load_state("networkidle")
        pg.wait_for_function("!document.querySelector('.ant-spin-spinning, .ant-skeleton-active')")
        pg.wait_for_timeout(500)
        for kind, js in (("unlabelled control", UNLABELLED_JS), ("low contrast", CONTRAST_JS)):
            found = pg.evaluate(js)
            if found:  # what a page shows while it settles (a fading message, a late load) is not its state
                pg.wait_for_timeout(1500)
                again = set(pg.evaluate(js))
                found = [x for x in found if x in again]
            if found:
                problems.setdefault(path, []).extend(f"{kind}: {x}" for x in found[:12])
    assert not problems, "\n".join(f"{p}:\n  " + "\n  ".join(v) for p, v in problems.items())


def test_names_are_readable_and_user_text_never_runs(page: Any, site: Site) -> None:
    """A console review found: a campaign name shown as HTML in the overview's uplift tooltip (a
    stored XSS), and the profile showing keys where words belong (score fields, group memberships,
    a merge's identifier as "type: phone; value: ..."). Text a user chose is text; names are words."""
    from goldkey.store.operational import campaigns

    pg, eyecare = page, site.brands[0]
    api = site.api(eyecare.admin_token)
    ran = sorted((c for c in api.get("/api/v1/campaigns").json() if c["run"] > 0),
                 key=lambda c: c["created_at"], reverse=True)
    with_uplift = [c for c in ran[:6] if api.get(f"/api/v1/campaigns/{c['campaign_id']}/report").json()
                   ["uplift"]["available"]]
    assert with_uplift, "the demo's campaigns have an uplift"
    victim = with_uplift[0]
    evil = '<img src=x onerror="window.__xss=1">Spring'
    with site.gk.engine.begin() as c:  # a name the API accepts (any text up to 200 characters)
        c.execute(campaigns.update().where(campaigns.c.campaign_id == victim["campaign_id"]).values(name=evil))
    try:
        pg.goto(site.url + "/")
        pg.wait_for_url(re.compile(r"/sign-in$"))
        sign_in(pg, site, eyecare.admin_token)
        card = pg.get_by_test_id("recent-campaigns")
        card.get_by_role("link", name=evil, exact=True).wait_for()
        card.scroll_into_view_if_needed()
        chart = card.locator(".gk-chart").first
        box = chart.bounding_box()
        seen = ""
        for fx in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
            pg.mouse.move(box["x"] + box["width"] * fx, box["y"] + box["height"] * 0.5)
            pg.wait_for_timeout(250)
            tip = card.locator("div[style*='z-index']").filter(has_text="Spring")
            if tip.count():
                seen = tip.first.inner_text()
                break
        assert "<img" in seen, seen  # shown as text
        assert pg.evaluate("window.__xss") is None
    finally:
        with site.gk.engine.begin() as c:
            c.execute(campaigns.update().where(campaigns.c.campaign_id == victim["campaign_id"])
                      .values(name=victim["name"]))

    # a profile with group memberships, a merge and model scores: words, not keys
    w = httpx.Client(base_url=site.url, auth=(eyecare.write_key, ""), timeout=30)
    for body in ({"type": "group", "anonymousId": "names-anon", "groupId": "acme",
                  "traits": {"name": "Acme <b>Optics</b>"}, "messageId": "names-1"},
                 {"type": "identify", "userId": "names-user", "traits": {"name": "名字测试"}, "messageId": "names-2"},
                 {"type": "identify", "userId": "names-user", "anonymousId": "names-anon", "messageId": "names-3"}):
        assert w.post("/v1/batch", json={"batch": [body]}).status_code == 200
    prof = api.get("/api/v1/profiles/lookup", params={"user_id": "names-user"}).json()
    pg.goto(site.url + f"/customers/{prof['profile_id']}")
    pg.get_by_test_id("profile-name").wait_for()
    attrs = pg.locator(".ant-card", has_text="基本属性")
    assert attrs.get_by_text("所属群组", exact=True).is_visible()
    assert attrs.get_by_text("acme (Acme <b>Optics</b>)", exact=True).is_visible()
    merges = pg.locator(".ant-card", has_text="合并记录")
    assert merges.get_by_text(re.compile(r"^匿名.*: names-anon$")).is_visible(), merges.inner_text()
    # a demo customer with RFM and lifecycle scores: every score field has a name
    with site.gk.engine.connect() as c:
        pid = c.execute(sa.text("SELECT profile_id FROM profile_scores WHERE workspace_id = :w AND scores LIKE "
                                "'%lc_model_version%' LIMIT 1"), {"w": eyecare.workspace_id}).scalar_one()
    pg.goto(site.url + f"/customers/{pid}")
    scores = pg.locator(".ant-card", has_text="模型评分")
    scores.get_by_text("生命周期模型版本", exact=True).wait_for()
    text = scores.inner_text()
    assert not re.search(r"\b(lc|rfm|clv|churn)_[a-z_]+", text), text
    assert pg.errors == [], pg.errors
