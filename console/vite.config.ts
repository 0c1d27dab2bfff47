import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";
import { fileURLToPath } from "node:url";

// The build goes into the Python package, where the Goldkey server serves it at "/"
// (src/goldkey/api/console.py). `npm run dev` proxies the API to a running server.
const outDir = fileURLToPath(new URL("../src/goldkey/console_dist", import.meta.url));
const api = process.env.GOLDKEY_URL ?? "http://127.0.0.1:8000";

export default defineConfig({
  plugins: [react()],
  build: {
    outDir,
    emptyOutDir: true,
    chunkSizeWarningLimit: 1500,
    rollupOptions: {
      output: {
        manualChunks: {
          react: ["react", "react-dom", "react-router-dom"],
          antd: ["antd", "@ant-design/icons"],
          echarts: ["echarts/core", "echarts/charts", "echarts/components", "echarts/renderers"],
        },
      },
    },
  },
  server: {
    proxy: { "/api": api, "/v1": api, "/healthz": api },
  },
});
