//! `ticklake-plot`: candlestick charts with a volume panel, as PNG or SVG, for reports and READMEs.
//!
//! The chart is drawn with `plotters`; its text with DejaVu Sans embedded in the binary, so a machine
//! with no fonts installed draws the same picture. Candles sit one per slot, oldest on the left, so
//! the hours and days a market is closed leave no gaps; the axis labels carry the times.
//!
//! ```no_run
//! # use ticklake_plot::{Candle, ChartSpec, render};
//! # let candles: Vec<Candle> = Vec::new();
//! let spec = ChartSpec::new("HSI, 1d bars");
//! render(&candles, &spec, std::path::Path::new("hsi.png")).unwrap();
//! ```

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use arrow::array::{Array, Float64Array, Int64Array, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use chrono::{DateTime, Utc};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

/// The smallest and largest picture, in pixels a side.
pub const SIZES: std::ops::RangeInclusive<u32> = 200..=8000;

/// What went wrong drawing a chart.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// The output's name asks for no format this crate writes.
    #[error("{path}: the chart is written as .png or .svg, not {found}")]
    Format { path: String, found: String },
    /// The picture's size is out of bounds.
    #[error("a chart of {width}x{height} pixels: each side must be from {} to {}", SIZES.start(), SIZES.end())]
    Size { width: u32, height: u32 },
    /// There is nothing to draw.
    #[error("no bars to draw")]
    Empty,
    /// The bars' columns are not the ones a chart reads.
    #[error("the bars have no {column} column of numbers ({message})")]
    Columns { column: String, message: String },
    /// A bar's numbers cannot be drawn (NaN or infinite prices, high below low).
    #[error("bar {index} ({time}) cannot be drawn: {message}")]
    Bar {
        index: usize,
        time: String,
        message: String,
    },
    /// The drawing library failed.
    #[error("cannot draw the chart: {0}")]
    Draw(String),
    /// Writing the file failed.
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// One bar: its start, prices and traded volume.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candle {
    pub time: DateTime<Utc>,
    pub open: f64,
    pub high: f64,
    pub low: f64,
    pub close: f64,
    pub volume: f64,
}

impl Candle {
    /// Reads bars from query results with `time` (Unix seconds), `open`, `high`, `low`, `close` and
    /// `volume` columns (as `ohlcv()` and `ticklake_query::market::bars_sql` give them), oldest first
    /// whatever the order of the rows. Rows with no volume count as zero volume.
    pub fn from_batches(batches: &[RecordBatch]) -> Result<Vec<Candle>, PlotError> {
        let mut candles = Vec::new();
        for batch in batches {
            let times = column(batch, "time", &DataType::Int64)?;
            let times = times
                .as_any()
                .downcast_ref::<Int64Array>()
                .expect("cast to Int64");
            let numbers = ["open", "high", "low", "close", "volume"]
                .map(|name| column(batch, name, &DataType::Float64));
            let [open, high, low, close, volume] = numbers;
            let (open, high, low, close, volume) = (open?, high?, low?, close?, volume?);
            let f = |a: &std::sync::Arc<dyn Array>| {
                a.as_any()
                    .downcast_ref::<Float64Array>()
                    .expect("cast to Float64")
                    .clone()
            };
            let (open, high, low, close, volume) =
                (f(&open), f(&high), f(&low), f(&close), f(&volume));
            for i in 0..batch.num_rows() {
                if times.is_null(i) {
                    continue;
                }
                let time = DateTime::from_timestamp(times.value(i), 0).ok_or_else(|| {
                    PlotError::Columns {
                        column: "time".into(),
                        message: format!("{} is out of range", times.value(i)),
                    }
                })?;
                let value = |a: &Float64Array| if a.is_null(i) { f64::NAN } else { a.value(i) };
                candles.push(Candle {
                    time,
                    open: value(&open),
                    high: value(&high),
                    low: value(&low),
                    close: value(&close),
                    volume: if volume.is_null(i) {
                        0.0
                    } else {
                        volume.value(i)
                    },
                });
            }
        }
        candles.sort_by_key(|c| c.time);
        Ok(candles)
    }
}

fn column(
    batch: &RecordBatch,
    name: &str,
    to: &DataType,
) -> Result<std::sync::Arc<dyn Array>, PlotError> {
    let err = |message: String| PlotError::Columns {
        column: name.into(),
        message,
    };
    let a = batch
        .column_by_name(name)
        .ok_or_else(|| err("missing".into()))?;
    cast(a, to).map_err(|e| err(e.to_string()))
}

/// The file formats a chart is written in, chosen by the output's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Png,
    Svg,
}

impl ImageFormat {
    /// The format `path`'s extension names (`.png` or `.svg`, in any case).
    pub fn from_path(path: &Path) -> Result<ImageFormat, PlotError> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or_default()
            .to_ascii_lowercase();
        match ext.as_str() {
            "png" => Ok(ImageFormat::Png),
            "svg" => Ok(ImageFormat::Svg),
            _ => Err(PlotError::Format {
                path: path.display().to_string(),
                found: if ext.is_empty() {
                    "a name without an extension".into()
                } else {
                    format!(".{ext}")
                },
            }),
        }
    }
}

/// A chart's title and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChartSpec {
    pub title: String,
    pub width: u32,
    pub height: u32,
}

impl ChartSpec {
    /// A 1200x700 chart titled `title`.
    pub fn new(title: impl Into<String>) -> ChartSpec {
        ChartSpec {
            title: title.into(),
            width: 1200,
            height: 700,
        }
    }

    /// Checks the size is within [`SIZES`].
    pub fn check(&self) -> Result<(), PlotError> {
        if SIZES.contains(&self.width) && SIZES.contains(&self.height) {
            Ok(())
        } else {
            Err(PlotError::Size {
                width: self.width,
                height: self.height,
            })
        }
    }
}

/// The colour of a bar whose close is at or above its open, and of one below (TradingView's).
pub const RISING: RGBColor = RGBColor(38, 166, 154);
pub const FALLING: RGBColor = RGBColor(239, 83, 80);

/// Draws `candles` (oldest first) to `path`, as PNG or SVG by its extension. The file appears whole
/// or not at all: the chart is written beside it and renamed into place.
pub fn render(candles: &[Candle], spec: &ChartSpec, path: &Path) -> Result<(), PlotError> {
    let format = ImageFormat::from_path(path)?;
    spec.check()?;
    check_candles(candles)?;
    let partial = partial_path(path);
    let written = match format {
        ImageFormat::Svg => {
            let svg = render_svg(candles, spec)?;
            std::fs::write(&partial, svg).map_err(|source| PlotError::Write {
                path: partial.display().to_string(),
                source,
            })
        }
        ImageFormat::Png => {
            // The backend writes the file when it is dropped, even after a failed drawing; the
            // partial file is removed then.
            let area = BitMapBackend::new(&partial, (spec.width, spec.height)).into_drawing_area();
            draw(area, candles, spec)
        }
    };
    let renamed = written.and_then(|()| {
        std::fs::rename(&partial, path).map_err(|source| PlotError::Write {
            path: path.display().to_string(),
            source,
        })
    });
    if renamed.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    renamed
}

/// Draws `candles` (oldest first) as an SVG document.
pub fn render_svg(candles: &[Candle], spec: &ChartSpec) -> Result<String, PlotError> {
    spec.check()?;
    check_candles(candles)?;
    let mut svg = String::new();
    {
        let area = SVGBackend::with_string(&mut svg, (spec.width, spec.height)).into_drawing_area();
        draw(area, candles, spec)?;
    }
    Ok(svg)
}

/// `.name.partial.ext` beside `path` (the extension kept: the PNG encoder reads it).
fn partial_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.partial.{ext}", std::process::id()))
}

fn check_candles(candles: &[Candle]) -> Result<(), PlotError> {
    if candles.is_empty() {
        return Err(PlotError::Empty);
    }
    for (index, c) in candles.iter().enumerate() {
        let bad = |message: &str| PlotError::Bar {
            index,
            time: c.time.to_rfc3339(),
            message: message.into(),
        };
        if ![c.open, c.high, c.low, c.close, c.volume]
            .iter()
            .all(|v| v.is_finite())
        {
            return Err(bad("a price or the volume is missing, NaN or infinite"));
        }
        if c.high < c.low {
            return Err(bad("its high is below its low"));
        }
    }
    Ok(())
}

/// Registers the embedded font under the family every text of the chart uses, once.
fn font() -> Result<(), PlotError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular()).is_ok()
    });
    ok.then_some(())
        .ok_or_else(|| PlotError::Draw("the embedded font cannot be read".into()))
}

/// Labels for the x axis: dates for daily or longer bars, times within a day otherwise.
fn time_label(candles: &[Candle]) -> impl Fn(&f64) -> String + '_ {
    use chrono::Timelike;
    let daily = candles
        .iter()
        .all(|c| c.time.num_seconds_from_midnight() == 0);
    move |x: &f64| {
        let i = x.round();
        if i < 0.0 || (i as usize) >= candles.len() || (x - i).abs() > 0.01 {
            return String::new();
        }
        let t = candles[i as usize].time;
        if daily {
            t.format("%Y-%m-%d").to_string()
        } else {
            t.format("%m-%d %H:%M").to_string()
        }
    }
}

/// A price with as many decimals as its size needs.
fn price_label(v: &f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

/// A volume in thousands (k), millions (M) or billions (B).
fn volume_label(v: &f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.1}B", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    candles: &[Candle],
    spec: &ChartSpec,
) -> Result<(), PlotError> {
    font()?;
    let e = |e: &dyn std::fmt::Display| PlotError::Draw(e.to_string());
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let root = root
        .titled(&spec.title, ("sans-serif", 22))
        .map_err(|x| e(&x))?;
    let (upper, lower) = root.split_vertically(72.percent_height());

    let n = candles.len();
    let x_range = -0.5f64..n as f64 - 0.5;
    let low = candles.iter().map(|c| c.low).fold(f64::INFINITY, f64::min);
    let high = candles
        .iter()
        .map(|c| c.high)
        .fold(f64::NEG_INFINITY, f64::max);
    let pad = ((high - low) * 0.05).max(high.abs() * 1e-6).max(1e-9);
    let labels = time_label(candles);
    let label_count = (spec.width as usize / 140).clamp(2, 12).min(n);

    let mut price = ChartBuilder::on(&upper)
        .margin(10)
        .x_label_area_size(0)
        .y_label_area_size(80)
        .build_cartesian_2d(x_range.clone(), low - pad..high + pad)
        .map_err(|x| e(&x))?;
    price
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_labels(8)
        .y_label_formatter(&price_label)
        .label_style(("sans-serif", 13))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(|x| e(&x))?;
    // A body takes 70% of a slot, at least a pixel.
    let slot = f64::from(spec.width.saturating_sub(100)) / n as f64;
    let body = ((slot * 0.7) as u32).max(1);
    price
        .draw_series(candles.iter().enumerate().map(|(i, c)| {
            CandleStick::new(
                i as f64,
                c.open,
                c.high,
                c.low,
                c.close,
                RISING.filled(),
                FALLING.filled(),
                body,
            )
        }))
        .map_err(|x| e(&x))?;

    let most = candles.iter().map(|c| c.volume).fold(0.0, f64::max);
    let mut volume = ChartBuilder::on(&lower)
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(80)
        .build_cartesian_2d(x_range, 0.0..(most * 1.1).max(1.0))
        .map_err(|x| e(&x))?;
    volume
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(label_count)
        .x_label_formatter(&labels)
        .y_labels(3)
        .y_label_formatter(&volume_label)
        .y_desc("volume")
        .label_style(("sans-serif", 13))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(|x| e(&x))?;
    volume
        .draw_series(candles.iter().enumerate().map(|(i, c)| {
            let colour = if c.close >= c.open { RISING } else { FALLING };
            Rectangle::new(
                [(i as f64 - 0.35, 0.0), (i as f64 + 0.35, c.volume)],
                colour.mix(0.6).filled(),
            )
        }))
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn candles(n: usize) -> Vec<Candle> {
        (0..n)
            .map(|i| {
                let open = 100.0 + (i as f64 * 0.7).sin() * 5.0;
                let close = open + if i % 3 == 0 { -1.5 } else { 1.0 };
                Candle {
                    time: Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap()
                        + chrono::Duration::days(i as i64),
                    open,
                    high: open.max(close) + 1.0,
                    low: open.min(close) - 1.0,
                    close,
                    volume: 1000.0 + i as f64 * 10.0,
                }
            })
            .collect()
    }

    #[test]
    fn svg_has_one_body_per_candle_in_its_colour() {
        let c = candles(30);
        let svg = render_svg(&c, &ChartSpec::new("TEST, 1d")).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100]);
        assert!(svg.contains("TEST, 1d"));
        assert!(svg.contains("2024-01-01"), "the first date labels the axis");
        let rising = c.iter().filter(|c| c.close >= c.open).count();
        let falling = c.len() - rising;
        // Each candle is a body (an opaque filled rect) in the price panel; volume bars are paler.
        let fill = |rgb: RGBColor| format!("fill=\"#{:02X}{:02X}{:02X}\"", rgb.0, rgb.1, rgb.2);
        let bodies = |rgb| {
            svg.lines()
                .filter(|l| l.starts_with("<rect") && l.contains(&fill(rgb)))
                .filter(|l| l.contains("opacity=\"1\""))
                .count()
        };
        let volume_bars = svg
            .lines()
            .filter(|l| l.starts_with("<rect") && l.contains("opacity=\"0.6\""))
            .count();
        assert_eq!(volume_bars, c.len());
        assert_eq!(bodies(RISING), rising, "{svg}");
        assert_eq!(bodies(FALLING), falling);
    }

    #[test]
    fn png_is_written_whole_and_named_by_its_extension() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chart.PNG");
        let spec = ChartSpec {
            width: 640,
            height: 400,
            ..ChartSpec::new("T")
        };
        render(&candles(10), &spec, &path).unwrap();
        let png = std::fs::read(&path).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 640);
        assert_eq!(u32::from_be_bytes(png[20..24].try_into().unwrap()), 400);
        // Nothing but the chart is left in the folder.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn bad_inputs_are_named_and_leave_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let spec = ChartSpec::new("T");
        let e = render(&candles(3), &spec, &dir.path().join("x.jpg")).unwrap_err();
        assert!(e.to_string().contains("not .jpg"), "{e}");
        let e = render(&candles(3), &spec, &dir.path().join("x")).unwrap_err();
        assert!(e.to_string().contains("without an extension"), "{e}");
        let e = render(&[], &spec, &dir.path().join("x.png")).unwrap_err();
        assert!(matches!(e, PlotError::Empty), "{e}");
        let mut bad = candles(3);
        bad[1].high = f64::NAN;
        let e = render(&bad, &spec, &dir.path().join("x.png")).unwrap_err();
        assert!(e.to_string().contains("bar 1 (2024-01-02"), "{e}");
        let small = ChartSpec {
            width: 10,
            ..spec.clone()
        };
        let e = render(&candles(3), &small, &dir.path().join("x.svg")).unwrap_err();
        assert!(e.to_string().contains("from 200 to 8000"), "{e}");
        let e = render(&candles(3), &spec, &dir.path().join("no/such/dir/x.svg")).unwrap_err();
        assert!(e.to_string().contains("cannot write"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn bars_are_read_from_query_results_oldest_first() {
        use arrow::array::{ArrayRef, Int64Array};
        use arrow::datatypes::{Field, Schema};
        use std::sync::Arc;
        let schema = Arc::new(Schema::new(vec![
            Field::new("time", DataType::Int64, true),
            Field::new("open", DataType::Float64, true),
            Field::new("high", DataType::Float64, true),
            Field::new("low", DataType::Float64, true),
            Field::new("close", DataType::Float64, true),
            Field::new("volume", DataType::Int64, true),
        ]));
        let f = |v: [f64; 2]| Arc::new(Float64Array::from(v.to_vec())) as ArrayRef;
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![86_400, 0])),
                f([2.0, 1.0]),
                f([3.0, 2.0]),
                f([1.5, 0.5]),
                f([2.5, 1.5]),
                Arc::new(Int64Array::from(vec![Some(7), None])),
            ],
        )
        .unwrap();
        let c = Candle::from_batches(std::slice::from_ref(&batch)).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].time.timestamp(), 0);
        assert_eq!((c[0].open, c[0].volume), (1.0, 0.0));
        assert_eq!((c[1].close, c[1].volume), (2.5, 7.0));
        let e = Candle::from_batches(&[batch.project(&[0, 1, 2, 3, 4]).unwrap()]).unwrap_err();
        assert!(e.to_string().contains("no volume column"), "{e}");
    }
}
