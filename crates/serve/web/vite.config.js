// The page is served by `ticklake serve` from the binary: relative asset paths, one small bundle.
import { defineConfig } from "vite";

export default defineConfig({
  base: "./",
  build: {
    outDir: process.env.TICKLAKE_WEB_OUT || "dist",
    emptyOutDir: true,
    assetsDir: "assets",
    sourcemap: false,
    chunkSizeWarningLimit: 1024,
  },
});
