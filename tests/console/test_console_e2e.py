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
        yield Site(server.start(), gk, result.brands)
    finally:
        server.stop()
        gk.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(locale="zh-CN", viewport={"width": 1400, "height": 900})
    pg = ctx.new_page()
    pg.set_default_timeout(30_000)
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
    pg.get_by_label("管理员令牌").fill(token)
    pg.locator("form button[type=submit]").click()


def pick(pg: Any, label: str, text: str, *, search: bool = True, nth: int = -1) -> None:
    """Choose ``text`` in the Ant Design select labelled ``label`` (the last one on the page by default)."""
    box = pg.get_by_label(label, exact=True).nth(nth)
    box.click(force=True)  # the selected value's label lies over the input
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
    for title in ("月度销售额与订单数（近 12 个月）", "新客与老客（近 365 天）", "客户价值分层（RFM）", "RFM 客户分群"):
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
    assert pg.get_by_text(f"共 {size3} 条").is_visible() or size3 == 0
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
    pg.get_by_test_id("workspace-switcher").click()
    pg.get_by_text("登录其他工作空间").click()
    pg.wait_for_url(re.compile(r"/sign-in\?add=1"))
    sign_in(pg, site, operator.admin_token)
    pg.wait_for_url(site.url + "/")
    assert operator.name in pg.get_by_test_id("workspace-switcher").inner_text()
    pg.get_by_test_id("workspace-switcher").click()
    menu = pg.locator(".ant-dropdown:visible")
    # the menu opens with an animation: wait until both workspaces are listed before reading them
    menu.get_by_role("menuitem").nth(1).wait_for()
    items = menu.get_by_role("menuitem").all_inner_texts()
    assert items[:2] == [eyecare.name, operator.name + " ✓"], items
    shot(pg, "workspace-switcher")
    menu.get_by_role("menuitem", name=eyecare.name, exact=True).click()
    pg.wait_for_function("n => document.querySelector('[data-testid=workspace-switcher]').innerText.includes(n)",
                         arg=eyecare.name)
    stored = pg.evaluate("JSON.parse(localStorage.getItem('goldkey.sessions')).map(s => s.workspace_id)")
    assert sorted(stored) == sorted([eyecare.workspace_id, operator.workspace_id])
    assert pg.errors == []
