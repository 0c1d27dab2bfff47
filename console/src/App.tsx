/** The console shell: providers (language, Ant Design locale and theme, session), the sider menu,
 * the header (workspace switcher, language switch, sign-out) and the routes. */
import { App as AntApp, Button, ConfigProvider, Dropdown, Layout, Menu, Segmented, Space, Tag, Typography } from "antd";
import {
  AimOutlined,
  ApartmentOutlined,
  AppstoreOutlined,
  BarChartOutlined,
  BulbOutlined,
  ClusterOutlined,
  DeploymentUnitOutlined,
  FundOutlined,
  HeatMapOutlined,
  NodeIndexOutlined,
  NotificationOutlined,
  ShoppingCartOutlined,
  DashboardOutlined,
  DownOutlined,
  LogoutOutlined,
  PlusOutlined,
  SettingOutlined,
  TagsOutlined,
  TeamOutlined,
  UsergroupAddOutlined,
} from "@ant-design/icons";
import zhCN from "antd/locale/zh_CN";
import enUS from "antd/locale/en_US";
import dayjs from "dayjs";
import "dayjs/locale/zh-cn";
import { useState } from "react";
import { BrowserRouter, Navigate, Route, Routes, useLocation, useNavigate } from "react-router-dom";
import { I18nProvider, useI18n } from "./i18n";
import { SessionProvider, useSession } from "./session";
import { SignIn } from "./pages/SignIn";
import { OverviewPage } from "./pages/Overview";
import { CustomersPage } from "./pages/Customers";
import { ProfilePage } from "./pages/Profile";
import { TagsPage } from "./pages/Tags";
import { SegmentsPage } from "./pages/Segments";
import { SegmentBuilderPage } from "./pages/SegmentBuilder";
import { SegmentDetailPage } from "./pages/SegmentDetail";
import { RfmPage } from "./pages/insight/Rfm";
import { ClvPage } from "./pages/insight/Clv";
import { ChurnPage } from "./pages/insight/Churn";
import { LifecyclePage } from "./pages/insight/Lifecycle";
import { ClustersPage } from "./pages/insight/Clusters";
import { CrossSellPage } from "./pages/insight/CrossSell";
import { ReportsPage } from "./pages/insight/Reports";
import { CampaignNewPage, CampaignsPage } from "./pages/activation/Campaigns";
import { CampaignDetailPage } from "./pages/activation/CampaignDetail";
import { JourneysPage } from "./pages/activation/Journeys";
import { JourneyCanvasPage } from "./pages/activation/JourneyCanvas";
import { SettingsPage } from "./pages/Settings";
import { RoleGate } from "./components/RoleGate";

export function App() {
  return (
    <I18nProvider>
      <Themed />
    </I18nProvider>
  );
}

function Themed() {
  const { lang } = useI18n();
  dayjs.locale(lang === "zh-CN" ? "zh-cn" : "en");
  return (
    <ConfigProvider
      locale={lang === "zh-CN" ? zhCN : enUS}
      theme={{ token: {
        // WCAG AA (4.5:1) for text: white on the primary gold, secondary and description text on
        // white and on the layout's grey (tests/console/test_console_e2e.py checks every main page)
        colorPrimary: "#8a6210", colorLink: "#8a6210", colorTextTertiary: "rgba(0, 0, 0, 0.6)",
        colorTextDescription: "rgba(0, 0, 0, 0.6)", borderRadius: 6, fontFamily: "-apple-system, BlinkMacSystemFont, 'Segoe UI', 'PingFang SC', 'Hiragino Sans GB', 'Microsoft YaHei', 'Noto Sans CJK SC', sans-serif" } }}
    >
      <AntApp>
        <SessionProvider>
          <BrowserRouter>
            <Routes>
              <Route path="/sign-in" element={<SignIn />} />
              <Route path="/*" element={<Shell />} />
            </Routes>
          </BrowserRouter>
        </SessionProvider>
      </AntApp>
    </ConfigProvider>
  );
}

function LangSwitch() {
  const { lang, setLang } = useI18n();
  return (
    <Segmented
      aria-label="Language / 语言"
      value={lang}
      onChange={(v) => setLang(v as "zh-CN" | "en")}
      options={[
        { value: "zh-CN", label: "中文" },
        { value: "en", label: "EN" },
      ]}
    />
  );
}

export function Brand({ compact = false }: { compact?: boolean }) {
  return (
    <Space align="center" size={8}>
      <span className="gk-logo" aria-hidden>金</span>
      {!compact && <Typography.Text strong style={{ fontSize: 17, color: "inherit" }}>Goldkey</Typography.Text>}
    </Space>
  );
}

function WorkspaceSwitcher() {
  const { t } = useI18n();
  const { sessions, current, switchTo, signOut } = useSession();
  const navigate = useNavigate();
  if (!current) return null;
  const items = [
    // a user's workspaces show the role there; an admin token's workspace is always admin
    ...sessions.map((s) => ({
      key: s.workspace_id,
      label: s.name + (s.kind === "user" ? ` · ${t(`roles.${s.role}`)}` : "") + (s.workspace_id === current.workspace_id ? " ✓" : ""),
    })),
    { type: "divider" as const },
    { key: "__add", icon: <PlusOutlined />, label: t("header.addWorkspace") },
    { key: "__out", icon: <LogoutOutlined />, label: t("header.signOut", { name: current.name }) },
  ];
  return (
    <Dropdown
      trigger={["click"]}
      menu={{
        items,
        onClick: ({ key }) => {
          if (key === "__add") navigate("/sign-in?add=1");
          else if (key === "__out") signOut(current.workspace_id);
          else {
            switchTo(key);
            navigate("/");
          }
        },
      }}
    >
      <Button data-testid="workspace-switcher" aria-label={t("header.workspace")}>
        <Space>
          <AppstoreOutlined />
          {current.name}
          <DownOutlined />
        </Space>
      </Button>
    </Dropdown>
  );
}

function Shell() {
  const { t } = useI18n();
  const { current } = useSession();
  const location = useLocation();
  const navigate = useNavigate();
  const [narrow, setNarrow] = useState(false);
  if (!current) return <Navigate to="/sign-in" replace />;
  const parts = location.pathname.split("/");
  const section = parts[1] === "insight" ? `/insight/${parts[2] ?? ""}` : "/" + (parts[1] ?? "");
  const menu = [
    { key: "/", icon: <DashboardOutlined />, label: t("nav.overview") },
    { key: "/customers", icon: <TeamOutlined />, label: t("nav.customers") },
    { key: "/segments", icon: <UsergroupAddOutlined />, label: t("nav.segments") },
    { key: "/tags", icon: <TagsOutlined />, label: t("nav.tags") },
    {
      key: "insight", icon: <BulbOutlined />, label: t("nav.insight"),
      children: [
        { key: "/insight/rfm", icon: <HeatMapOutlined />, label: t("nav.rfm") },
        { key: "/insight/clv", icon: <FundOutlined />, label: t("nav.clv") },
        { key: "/insight/churn", icon: <AimOutlined />, label: t("nav.churn") },
        { key: "/insight/lifecycle", icon: <NodeIndexOutlined />, label: t("nav.lifecycle") },
        { key: "/insight/clusters", icon: <ClusterOutlined />, label: t("nav.clusters") },
        { key: "/insight/cross-sell", icon: <ShoppingCartOutlined />, label: t("nav.crossSell") },
        { key: "/insight/reports", icon: <BarChartOutlined />, label: t("nav.reports") },
      ],
    },
    {
      key: "activation", icon: <DeploymentUnitOutlined />, label: t("nav.activation"),
      children: [
        { key: "/campaigns", icon: <NotificationOutlined />, label: t("nav.campaigns") },
        { key: "/journeys", icon: <ApartmentOutlined />, label: t("nav.journeys") },
      ],
    },
    { key: "/settings", icon: <SettingOutlined />, label: t("nav.settings") },
  ];
  const open = section.startsWith("/insight") ? ["insight"] : section === "/campaigns" || section === "/journeys" ? ["activation"] : [];
  return (
    <Layout style={{ minHeight: "100vh" }}>
      <Layout.Sider width={208} breakpoint="lg" collapsedWidth={64} collapsed={narrow} onBreakpoint={setNarrow} trigger={null} theme="dark" className="gk-sider">
        <div className="gk-brand"><Brand compact={narrow} /></div>
        <Menu theme="dark" mode="inline" selectedKeys={[section]} defaultOpenKeys={open} items={menu} onClick={({ key }) => navigate(key)} />
      </Layout.Sider>
      <Layout>
        <Layout.Header className="gk-header">
          {current.kind === "user" ? (
            <Space size={6} className="gk-header-note">
              <Typography.Text type="secondary">{t("header.noteUser", { email: current.email ?? "" })}</Typography.Text>
              <Tag data-testid="current-role" aria-label={t("header.role", { role: t(`roles.${current.role}`) })}>{t(`roles.${current.role}`)}</Tag>
            </Space>
          ) : (
            <Typography.Text type="secondary" className="gk-header-note">{t("header.note")}</Typography.Text>
          )}
          <Space size="middle">
            <WorkspaceSwitcher />
            <LangSwitch />
          </Space>
        </Layout.Header>
        <Layout.Content className="gk-content" key={current.workspace_id}>
          <Routes>
            <Route path="/" element={<OverviewPage />} />
            <Route path="/customers" element={<CustomersPage />} />
            <Route path="/customers/:profileId" element={<ProfilePage />} />
            <Route path="/segments" element={<SegmentsPage />} />
            <Route path="/segments/new" element={<RoleGate need="marketer"><SegmentBuilderPage /></RoleGate>} />
            <Route path="/segments/:segmentId" element={<SegmentDetailPage />} />
            <Route path="/segments/:segmentId/edit" element={<RoleGate need="marketer"><SegmentBuilderPage /></RoleGate>} />
            <Route path="/tags" element={<TagsPage />} />
            <Route path="/insight/rfm" element={<RfmPage />} />
            <Route path="/insight/clv" element={<ClvPage />} />
            <Route path="/insight/churn" element={<ChurnPage />} />
            <Route path="/insight/lifecycle" element={<LifecyclePage />} />
            <Route path="/insight/clusters" element={<ClustersPage />} />
            <Route path="/insight/cross-sell" element={<CrossSellPage />} />
            <Route path="/insight/reports" element={<ReportsPage />} />
            <Route path="/campaigns" element={<CampaignsPage />} />
            <Route path="/campaigns/new" element={<RoleGate need="marketer"><CampaignNewPage /></RoleGate>} />
            <Route path="/campaigns/:campaignId" element={<CampaignDetailPage />} />
            <Route path="/journeys" element={<JourneysPage />} />
            <Route path="/journeys/new" element={<RoleGate need="marketer"><JourneyCanvasPage /></RoleGate>} />
            <Route path="/journeys/:journeyId" element={<JourneyCanvasPage />} />
            <Route path="/settings" element={<SettingsPage />} />
            <Route path="*" element={<Navigate to="/" replace />} />
          </Routes>
        </Layout.Content>
      </Layout>
    </Layout>
  );
}

export { LangSwitch };
