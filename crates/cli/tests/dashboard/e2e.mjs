// Drives the page of `ticklake serve` in headless Chromium with playwright-core (run by
// tests/dashboard.rs): node e2e.mjs URL SCREENSHOT_DIR EXPECTED_HISTORY_BARS SYMBOLS
// Exits non-zero, naming the step, when the page does not do what it should; prints its measures as JSON.
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const { chromium } = require(process.env.TICKLAKE_TEST_PLAYWRIGHT);
const [url, shots, expectedHistory, symbols] = process.argv.slice(2);
const WAIT = { timeout: 30000 };

function check(condition, what) {
  if (!condition) throw new Error(what);
}

const browser = await chromium.launch({
  executablePath: process.env.TICKLAKE_TEST_CHROMIUM,
  args: ["--no-sandbox"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1050 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  // The browser logs every failed request; the bad query's 400 below is expected.
  page.on("console", (m) => {
    if (m.type() === "error" && !/status of 400/.test(m.text())) errors.push(m.text());
  });

  // First paint: the board filled from /api/latest.
  const started = Date.now();
  await page.goto(url);
  await page.waitForSelector("#board tbody tr", WAIT);
  const firstPaintMs = Date.now() - started;
  check((await page.locator("#board tbody tr").count()) === Number(symbols), "the board has a row per symbol");

  // The board moves while the simulator runs.
  const board = await page.locator("#board tbody").innerText();
  await page.waitForFunction((b) => document.querySelector("#board tbody").innerText !== b, board, WAIT);

  // The chart: every bar of the symbol's history from the lake (1m bars by default)...
  await page.waitForFunction(() => window.ticklake.chart().history > 0, null, WAIT);
  const chart = await page.evaluate(() => window.ticklake.chart());
  check(chart.interval === "1m", `the chart opens on 1m bars, not ${chart.interval}`);
  check(chart.history === Number(expectedHistory), `the chart drew ${chart.history} bars of history, not ${expectedHistory}`);
  // ... and the newest candle, from the live tail (no sink runs: nothing is flushed), changes.
  await page.waitForFunction(() => window.ticklake.chart().candles > window.ticklake.chart().history, null, WAIT);
  const newest = (await page.evaluate(() => window.ticklake.chart())).last;
  await page.waitForFunction(
    (n) => {
      const c = window.ticklake.chart().last;
      return c.time !== n.time || c.close !== n.close || c.volume !== n.volume;
    },
    newest,
    WAIT,
  );
  await page.screenshot({ path: `${shots}/dashboard.png` });

  // Another interval redraws from the lake.
  await page.click('#intervals button[data-interval="1h"]');
  await page.waitForFunction(() => window.ticklake.chart().interval === "1h" && window.ticklake.chart().history > 0, null, WAIT);
  const hourly = await page.evaluate(() => window.ticklake.chart());
  check(hourly.history >= 3 && hourly.history <= 4, `1h bars over 3 hours: ${hourly.history}`);

  // The SQL console: rows, and a chart when the result has a time column.
  await page.fill("#sql", "SELECT symbol, count(*) AS n FROM stock_topic GROUP BY symbol ORDER BY symbol");
  await page.click("#run");
  await page.waitForSelector("#results tbody tr", WAIT);
  check((await page.locator("#results tbody tr").count()) === Number(symbols), "the console shows a row per symbol");
  await page.fill("#sql", "SELECT bar, close FROM ohlcv('stock_topic', '5 minutes') ORDER BY bar");
  await page.click("#run");
  await page.waitForSelector("#result-chart:not([hidden])", WAIT);

  // A bad query shows its error inline, with its place.
  await page.fill("#sql", "SELECT symbol\nFROM stock_topic WHERE");
  await page.click("#run");
  await page.waitForSelector("#sql-error:not([hidden])", WAIT);
  const error = await page.locator("#sql-error").innerText();
  check(/at line 2, column \d+/.test(error), `the error shows its place: ${error}`);
  check((await page.locator("#results tbody tr").count()) === 0, "a failed query clears the old rows");
  await page.screenshot({ path: `${shots}/sql-error.png` });

  check(errors.length === 0, `the page logged errors: ${errors.join("; ")}`);
  console.log(JSON.stringify({ firstPaintMs, history: chart.history, hourly: hourly.history }));
} finally {
  await browser.close();
}
