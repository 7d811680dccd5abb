// The page of `ticklake serve`: a live ticker board, candlesticks with volume, and an SQL console.
// Everything it shows comes from the server's JSON API (see /api/openapi.json): history from the lake
// through the query engine, the live tail from the bus (GET /api/live, read with fetch so that a
// bearer token can be sent, which EventSource cannot).
import {
  createChart,
  CandlestickSeries,
  HistogramSeries,
  LineSeries,
} from "lightweight-charts";

const $ = (id) => document.getElementById(id);
const UP = "#26a69a";
const DOWN = "#ef5350";

const state = {
  token: sessionStorage.getItem("ticklake-token") || "",
  table: null,
  symbol: null,
  interval: "1m",
  board: new Map(), // symbol -> { price, change, pct, volume, ts }
  dirty: new Set(),
  drawScheduled: false,
  loaded: null, // the symbol and interval of the chart's bars
  candles: [], // the chart's bars, oldest first: { time, open, high, low, close, volume, lastTs }
  historyCount: 0,
  liveBars: 0,
  liveAbort: null,
};

/** An API call; throws an Error carrying the server's JSON error body. */
async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (state.token) headers.set("Authorization", `Bearer ${state.token}`);
  const response = await fetch(path, { ...options, headers });
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    if (response.status === 401) $("token-form").hidden = false;
    const error = new Error(body?.error || `${response.status} ${response.statusText}`);
    error.body = body;
    error.status = response.status;
    throw error;
  }
  return body;
}

function status(text, kind = "") {
  const el = $("status");
  el.textContent = text;
  el.className = `status ${kind}`;
}

const number = (v, digits = 2) =>
  v == null || Number.isNaN(v) ? "" : Number(v).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });
const volume = (v) => (v == null ? "" : Number(v).toLocaleString("en-US", { maximumFractionDigits: 0 }));
const utc = (ts) => (ts ? new Date(ts).toISOString().replace("T", " ").slice(0, 19) : "");

// ---- The ticker board ----------------------------------------------------------------------------

async function loadBoard() {
  const latest = await api(`/api/latest?table=${encodeURIComponent(state.table)}`);
  state.board.clear();
  $("board").tBodies[0].replaceChildren();
  for (const row of latest.latest) {
    state.board.set(row.symbol, {
      price: row.price,
      change: row.change,
      pct: row.change_pct,
      volume: row.volume,
      ts: Date.parse(row.ts),
    });
    state.dirty.add(row.symbol);
  }
  scheduleDraw();
}

/** Live bars move the board: the price is the newest close, the change from the price shown before. */
function boardUpdate(bar) {
  const row = state.board.get(bar.symbol) || {};
  const ts = bar.ts / 1000;
  if (row.ts && ts < row.ts) return; // older than what is shown
  const before = row.price;
  row.price = bar.close;
  if (before != null && bar.close != null) {
    row.change = bar.close - before;
    row.pct = before !== 0 ? (row.change / before) * 100 : null;
  }
  row.volume = bar.volume;
  row.ts = ts;
  state.board.set(bar.symbol, row);
  state.dirty.add(bar.symbol);
  scheduleDraw();
}

/** Draws the rows that changed, at most once per frame however fast bars arrive. */
function scheduleDraw() {
  if (state.drawScheduled) return;
  state.drawScheduled = true;
  requestAnimationFrame(() => {
    state.drawScheduled = false;
    const body = $("board").tBodies[0];
    for (const symbol of state.dirty) {
      const row = state.board.get(symbol);
      let tr = body.querySelector(`tr[data-symbol="${CSS.escape(symbol)}"]`);
      if (!tr) {
        tr = document.createElement("tr");
        tr.dataset.symbol = symbol;
        for (let i = 0; i < 6; i++) tr.appendChild(document.createElement("td"));
        tr.addEventListener("click", () => chooseSymbol(symbol));
        const after = [...body.rows].find((r) => r.dataset.symbol > symbol);
        body.insertBefore(tr, after || null);
      }
      const cells = tr.cells;
      const direction = row.change > 0 ? "up" : row.change < 0 ? "down" : "";
      cells[0].textContent = symbol;
      cells[1].textContent = number(row.price);
      cells[2].textContent = number(row.change);
      cells[3].textContent = row.pct == null ? "" : `${number(row.pct)}%`;
      cells[4].textContent = volume(row.volume);
      cells[5].textContent = utc(row.ts);
      for (const c of [cells[2], cells[3]]) c.className = direction;
      tr.classList.toggle("chosen", symbol === state.symbol);
      tr.classList.remove("flash");
      void tr.offsetWidth; // restart the flash
      tr.classList.add("flash");
    }
    state.dirty.clear();
  });
}

// ---- The chart ---------------------------------------------------------------------------------

const chart = createChart($("chart"), {
  autoSize: true,
  layout: { background: { color: "#161c23" }, textColor: "#d8dee6" },
  grid: { vertLines: { color: "#1f2832" }, horzLines: { color: "#1f2832" } },
  timeScale: { timeVisible: true, secondsVisible: false },
});
const candleSeries = chart.addSeries(CandlestickSeries, {
  upColor: UP,
  downColor: DOWN,
  borderVisible: false,
  wickUpColor: UP,
  wickDownColor: DOWN,
});
candleSeries.priceScale().applyOptions({ scaleMargins: { top: 0.08, bottom: 0.28 } });
const volumeSeries = chart.addSeries(HistogramSeries, {
  priceFormat: { type: "volume" },
  priceScaleId: "volume",
});
volumeSeries.priceScale().applyOptions({ scaleMargins: { top: 0.78, bottom: 0 } });

/** The start of the bar holding `time` (Unix seconds), as the server's `ohlcv` computes it. */
function barStart(time, interval) {
  const m = /^(\d+)(s|m|h|d|w|mo|y)$/.exec(interval);
  const count = Number(m[1]);
  const unit = m[2];
  if (unit === "mo" || unit === "y") {
    const d = new Date(time * 1000);
    const months = unit === "y" ? 12 : count;
    const month = Math.floor(d.getUTCMonth() / months) * months;
    return Date.UTC(d.getUTCFullYear(), month, 1) / 1000;
  }
  const seconds = { s: 1, m: 60, h: 3600, d: 86400, w: 604800 }[unit] * count;
  return Math.floor(time / seconds) * seconds;
}

function volumePoint(c) {
  return { time: c.time, value: c.volume ?? 0, color: c.close >= c.open ? "#26a69a66" : "#ef535066" };
}

async function loadChart() {
  if (!state.symbol) return;
  $("chart-title").textContent = state.symbol;
  for (const b of $("intervals").children) b.classList.toggle("active", b.dataset.interval === state.interval);
  const q = new URLSearchParams({ table: state.table, symbol: state.symbol, interval: state.interval, limit: "5000" });
  let bars;
  try {
    bars = await api(`/api/bars?${q}`);
  } catch (e) {
    $("chart-note").textContent = e.message;
    return;
  }
  state.candles = bars.bars
    .filter((b) => b.open != null && b.close != null)
    .map((b) => ({ time: b.time, open: b.open, high: b.high, low: b.low, close: b.close, volume: b.volume, lastTs: 0 }));
  state.historyCount = state.candles.length;
  state.loaded = { symbol: state.symbol, interval: state.interval };
  candleSeries.setData(state.candles.map(({ time, open, high, low, close }) => ({ time, open, high, low, close })));
  volumeSeries.setData(state.candles.map(volumePoint));
  const n = state.candles.length;
  if (n > 0) chart.timeScale().setVisibleLogicalRange({ from: Math.max(0, n - 150), to: n + 5 });
  $("chart-note").textContent = `${n} bars${bars.truncated ? " (the newest)" : ""} from the lake; live records are added as they stream`;
}

/** Merges a live one-second bar into the chart's newest bar, or starts a new one. */
function chartUpdate(bar) {
  if (bar.symbol !== state.symbol || bar.close == null) return;
  const time = barStart(bar.time, state.interval);
  const last = state.candles[state.candles.length - 1];
  let c;
  if (!last || time > last.time) {
    c = { time, open: bar.open, high: bar.high, low: bar.low, close: bar.close, volume: bar.volume ?? 0, lastTs: bar.ts };
    state.candles.push(c);
  } else if (time === last.time) {
    c = last;
    c.high = Math.max(c.high, bar.high ?? bar.close);
    c.low = Math.min(c.low, bar.low ?? bar.close);
    if (bar.ts >= c.lastTs) {
      c.close = bar.close;
      c.lastTs = bar.ts;
    }
    c.volume = (c.volume ?? 0) + (bar.volume ?? 0);
  } else {
    return; // older than the chart's newest bar
  }
  candleSeries.update({ time: c.time, open: c.open, high: c.high, low: c.low, close: c.close });
  volumeSeries.update(volumePoint(c));
}

function chooseSymbol(symbol) {
  state.symbol = symbol;
  $("symbol").value = symbol;
  for (const tr of $("board").tBodies[0].rows) tr.classList.toggle("chosen", tr.dataset.symbol === symbol);
  loadChart();
}

// ---- The live tail -----------------------------------------------------------------------------

async function live() {
  state.liveAbort?.abort();
  const controller = new AbortController();
  state.liveAbort = controller;
  const headers = state.token ? { Authorization: `Bearer ${state.token}` } : {};
  try {
    const response = await fetch("/api/live", { headers, signal: controller.signal });
    if (!response.ok) {
      const body = await response.json().catch(() => null);
      status(`no live feed: ${body?.error || response.status}`, "error");
      if (response.status === 503) return;
      throw new Error(body?.error);
    }
    status("live", "live");
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let event = "";
        let data = "";
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) event = line.slice(6).trim();
          else if (line.startsWith("data:")) data += line.slice(5).trimStart();
        }
        if (event === "bars") {
          for (const bar of JSON.parse(data)) {
            state.liveBars += 1;
            boardUpdate(bar);
            chartUpdate(bar);
          }
        }
      }
    }
  } catch (e) {
    if (controller.signal.aborted) return;
  }
  status("reconnecting…", "error");
  setTimeout(live, 2000);
}

// ---- The SQL console ---------------------------------------------------------------------------

const resultChart = createChart($("result-chart"), {
  autoSize: true,
  layout: { background: { color: "#161c23" }, textColor: "#d8dee6" },
  grid: { vertLines: { color: "#1f2832" }, horzLines: { color: "#1f2832" } },
  timeScale: { timeVisible: true },
});
const resultLine = resultChart.addSeries(LineSeries, { color: "#4aa3ff", lineWidth: 2 });

async function runSql() {
  const sql = $("sql").value;
  $("sql-error").hidden = true;
  $("sql-info").textContent = "running…";
  try {
    const r = await api("/api/query", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ sql, max_rows: 1000 }),
    });
    showResult(r);
    $("sql-info").textContent = `${r.row_count} rows${r.truncated ? " (the first; there are more)" : ""} in ${r.elapsed_ms.toFixed(1)} ms`;
  } catch (e) {
    $("sql-info").textContent = "";
    $("results").replaceChildren();
    $("result-chart").hidden = true;
    showSqlError(e, sql);
  }
}

/** The error, and for a located SQL error the line with a caret under the spot (also selected). */
function showSqlError(e, sql) {
  let text = e.message;
  const line = e.body?.line;
  const column = e.body?.column;
  if (line) {
    const lines = sql.split("\n");
    const shown = lines[line - 1] ?? "";
    text += `\n\nat line ${line}, column ${column}:\n${shown}\n${" ".repeat(Math.max(0, column - 1))}^`;
    const offset = lines.slice(0, line - 1).reduce((n, l) => n + l.length + 1, 0) + Math.max(0, column - 1);
    $("sql").focus();
    $("sql").setSelectionRange(offset, offset + 1);
  }
  $("sql-error").textContent = text;
  $("sql-error").hidden = false;
}

function showResult(r) {
  const table = document.createElement("table");
  const head = table.createTHead().insertRow();
  for (const c of r.columns) {
    const th = document.createElement("th");
    th.textContent = c.name;
    th.title = c.type;
    head.appendChild(th);
  }
  const body = table.createTBody();
  for (const row of r.rows) {
    const tr = body.insertRow();
    for (const c of r.columns) {
      const v = row[c.name];
      tr.insertCell().textContent = v == null ? "NULL" : typeof v === "object" ? JSON.stringify(v) : String(v);
    }
  }
  $("results").replaceChildren(table);
  // A chart of the first numeric column over the first time column, when the result has both.
  const time = r.columns.find((c) => /^(Timestamp|Date)/.test(c.type));
  const value = r.columns.find((c) => /^(Float|Int|UInt|Decimal)/.test(c.type));
  if (!time || !value || r.rows.length < 2) {
    $("result-chart").hidden = true;
    return;
  }
  const points = new Map();
  for (const row of r.rows) {
    const t = Date.parse(row[time.name]);
    const v = row[value.name];
    if (!Number.isNaN(t) && v != null) points.set(Math.floor(t / 1000), Number(v));
  }
  const data = [...points].sort((a, b) => a[0] - b[0]).map(([t, v]) => ({ time: t, value: v }));
  $("result-chart").hidden = false;
  resultLine.setData(data);
  resultChart.timeScale().fitContent();
}

async function loadTables() {
  const t = await api("/api/tables");
  const aside = $("tables");
  aside.replaceChildren();
  const select = $("table");
  select.replaceChildren();
  for (const table of t.tables) {
    const details = document.createElement("details");
    const summary = document.createElement("summary");
    summary.textContent = table.name;
    details.appendChild(summary);
    const list = document.createElement("ul");
    for (const c of table.columns) {
      const li = document.createElement("li");
      li.textContent = `${c.name} ${c.type}`;
      list.appendChild(li);
    }
    details.appendChild(list);
    aside.appendChild(details);
    select.add(new Option(table.name, table.name));
  }
}

async function loadSymbols() {
  const s = await api(`/api/symbols${state.table ? `?table=${encodeURIComponent(state.table)}` : ""}`);
  state.table = s.table;
  $("table").value = s.table;
  const select = $("symbol");
  select.replaceChildren(...s.symbols.map((x) => new Option(x, x)));
  if (!s.symbols.includes(state.symbol)) state.symbol = s.symbols[0] ?? null;
  if (state.symbol) select.value = state.symbol;
}

async function start() {
  try {
    await loadTables();
    await loadSymbols();
    await loadBoard();
    await loadChart();
    live();
  } catch (e) {
    status(e.status === 401 ? "needs a token" : e.message, "error");
  }
}

$("run").addEventListener("click", runSql);
$("sql").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) runSql();
});
$("symbol").addEventListener("change", (e) => chooseSymbol(e.target.value));
$("intervals").addEventListener("click", (e) => {
  if (!e.target.dataset.interval) return;
  state.interval = e.target.dataset.interval;
  loadChart();
});
$("table").addEventListener("change", async (e) => {
  state.table = e.target.value;
  try {
    await loadSymbols();
    await loadBoard();
    await loadChart();
  } catch (err) {
    status(err.message, "error");
  }
});
$("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  state.token = $("token").value.trim();
  sessionStorage.setItem("ticklake-token", state.token);
  $("token-form").hidden = true;
  start();
});

// What the end-to-end test reads.
window.ticklake = {
  // The symbol and interval of the bars drawn (a choice is drawn once its bars have loaded).
  chart: () => ({
    symbol: state.loaded?.symbol,
    interval: state.loaded?.interval,
    history: state.historyCount,
    candles: state.candles.length,
    last: state.candles.length ? { ...state.candles[state.candles.length - 1] } : null,
  }),
  liveBars: () => state.liveBars,
};

start();
