//! How a scan's files are dealt out to the engine's partitions when their order must hold.
//!
//! A scan whose files are each sorted (ticklake writes `symbol, ts` as Parquet `sorting_columns`)
//! can declare that order for a partition only if its files follow each other in that order. Which
//! files may follow which is proven from their statistics; how much each partition has to read is a
//! matter of bytes. Both functions here keep DataFusion's proof (its min/max bin packing, run on each
//! group) and balance the groups by bytes, so no core idles while another reads the rest.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use arrow::datatypes::SchemaRef;
use datafusion::common::stats::Precision;
use datafusion::common::ScalarValue;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfig};
use datafusion::physical_expr::expressions::Column as ColumnExpr;
use datafusion::physical_expr::LexOrdering;

/// `files` in at most `target` groups, each group's files in `primary`'s order and the groups
/// balanced by bytes. `None` when the files do not fit `target` such groups this way.
///
/// DataFusion's own packing (`split_groups_by_statistics_with_target_partitions`) balances the
/// groups by their number of files. Files differ in size (a flush cuts each partition's rows
/// wherever it falls), so on a simulated 10 M-row lake its two groups held 54 MB and 41 MB: for the
/// last quarter of a full scan, one core had nothing to do. Here the same greedy pass
/// (files by their least key, each to a group it may follow) gives each file to the eligible group
/// with the fewest bytes. Each group is then checked by DataFusion's packing, which must find it
/// one ordered group, so the order declared is the one DataFusion proves.
pub(crate) fn ordered_groups(
    files: &[PartitionedFile],
    primary: &LexOrdering,
    target: usize,
    table_schema: &SchemaRef,
) -> Option<Vec<FileGroup>> {
    let mut keyed: Vec<(SortKey, SortKey, &PartitionedFile)> = files
        .iter()
        .map(|file| {
            let (least, greatest) = sort_keys(file, primary)?;
            Some((least, greatest, file))
        })
        .collect::<Option<_>>()?;
    let mut comparable = true;
    keyed.sort_by(|a, b| {
        a.0.cmp(&b.0).unwrap_or_else(|| {
            comparable = false;
            Ordering::Equal
        })
    });
    if !comparable {
        return None;
    }
    // Per group: its bytes, the greatest key of its last file, its files.
    let mut groups: Vec<(u64, Option<&SortKey>, Vec<PartitionedFile>)> =
        (0..target.max(1)).map(|_| (0, None, Vec::new())).collect();
    for (least, greatest, file) in &keyed {
        let mut lightest: Option<usize> = None;
        for (i, (bytes, last, _)) in groups.iter().enumerate() {
            let follows = match last {
                None => true,
                Some(last) => least.cmp(last)? == Ordering::Greater,
            };
            if follows && lightest.is_none_or(|l| *bytes < groups[l].0) {
                lightest = Some(i);
            }
        }
        let group = &mut groups[lightest?];
        group.0 += file.object_meta.size;
        group.1 = Some(greatest);
        group.2.push((*file).clone());
    }
    groups.retain(|(_, _, files)| !files.is_empty());
    groups
        .into_iter()
        .map(|(_, _, files)| proven_order(files, primary, table_schema))
        .collect()
}

/// `files` in at most `target` groups such that all files of a symbol (the partition value at
/// `symbol`) are in one group, the groups balanced by bytes, and each group's files in `primary`'s
/// order, as DataFusion's min/max bin packing proves it from their statistics. `None` when a group's
/// files cannot be put in that order (overlapping times within a symbol, say a late file beside a
/// merged one), or a file has no symbol value.
///
/// Rows of one symbol then never leave their partition, so the scan may declare itself partitioned
/// by its partition columns. That is a grouping, not DataFusion's hash: the engine asks for it only
/// for plans that read one table through single-input operators (see `Engine::run`), where nothing
/// matches the scan's partitions against another input's hashed ones.
pub(crate) fn symbol_groups(
    files: &[PartitionedFile],
    symbol: usize,
    primary: &LexOrdering,
    target: usize,
    table_schema: &SchemaRef,
) -> Option<Vec<FileGroup>> {
    let mut symbols: BTreeMap<Option<String>, (u64, Vec<PartitionedFile>)> = BTreeMap::new();
    for file in files {
        let ScalarValue::Utf8(value) = file.partition_values.get(symbol)? else {
            return None;
        };
        let entry = symbols.entry(value.clone()).or_default();
        entry.0 += file.object_meta.size;
        entry.1.push(file.clone());
    }
    let mut symbols: Vec<(u64, Vec<PartitionedFile>)> = symbols.into_values().collect();
    symbols.sort_by_key(|(bytes, _)| std::cmp::Reverse(*bytes));
    let mut groups: Vec<(u64, Vec<PartitionedFile>)> =
        vec![(0, Vec::new()); target.min(symbols.len())];
    for (bytes, files) in symbols {
        let lightest = groups.iter_mut().min_by_key(|(size, _)| *size)?;
        lightest.0 += bytes;
        lightest.1.extend(files);
    }
    groups
        .into_iter()
        .map(|(_, files)| proven_order(files, primary, table_schema))
        .collect()
}

/// `files` as one group in `primary`'s order, if DataFusion's min/max bin packing finds they make
/// one ordered group.
fn proven_order(
    files: Vec<PartitionedFile>,
    primary: &LexOrdering,
    table_schema: &SchemaRef,
) -> Option<FileGroup> {
    let ordered = FileScanConfig::split_groups_by_statistics_with_target_partitions(
        table_schema,
        &[FileGroup::new(files)],
        primary,
        1,
    )
    .ok()?;
    <[FileGroup; 1]>::try_from(ordered)
        .ok()
        .map(|[group]| group)
}

/// A file's least or greatest row in a sort order: one value per sort column, each with whether
/// that column is descending.
struct SortKey(Vec<(ScalarValue, bool)>);

impl SortKey {
    /// Lexicographic, in the sort order's directions; `None` where two values do not compare.
    fn cmp(&self, other: &SortKey) -> Option<Ordering> {
        for ((a, descending), (b, _)) in self.0.iter().zip(&other.0) {
            let order = a.partial_cmp(b)?;
            let order = if *descending { order.reverse() } else { order };
            if order != Ordering::Equal {
                return Some(order);
            }
        }
        Some(Ordering::Equal)
    }
}

/// The least and greatest keys of `file`'s rows in `order`, from its statistics (which cover the
/// table's columns, partition columns included). `None` when a sort column is not a column, or its
/// statistics lack a min or max, or do not say the column has no nulls.
fn sort_keys(file: &PartitionedFile, order: &LexOrdering) -> Option<(SortKey, SortKey)> {
    let statistics = file.statistics.as_ref()?;
    let (mut least, mut greatest) = (Vec::new(), Vec::new());
    for expr in order.iter() {
        let column = expr.expr.as_any().downcast_ref::<ColumnExpr>()?;
        let stats = statistics.column_statistics.get(column.index())?;
        if !matches!(stats.null_count, Precision::Exact(0)) {
            return None;
        }
        let (min, max) = (
            stats.min_value.get_value()?.clone(),
            stats.max_value.get_value()?.clone(),
        );
        let descending = expr.options.descending;
        let (low, high) = if descending { (max, min) } else { (min, max) };
        least.push((low, descending));
        greatest.push((high, descending));
    }
    Some((SortKey(least), SortKey(greatest)))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::compute::SortOptions;
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use datafusion::common::{ColumnStatistics, Statistics};
    use datafusion::physical_expr::PhysicalSortExpr;

    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, None),
                false,
            ),
            Field::new("symbol", DataType::Utf8, false),
        ]))
    }

    /// `symbol, ts`, as the provider declares it for files in folders by symbol.
    fn symbol_ts() -> LexOrdering {
        let column = |name: &str, i| {
            PhysicalSortExpr::new(Arc::new(ColumnExpr::new(name, i)), SortOptions::default())
        };
        LexOrdering::new([column("symbol", 1), column("ts", 0)]).unwrap()
    }

    /// A file of `bytes` in `symbol`'s folder whose rows span `ts` `from..=to`; `nulls` in `ts`.
    fn file(symbol: &str, from: i64, to: i64, bytes: u64, nulls: usize) -> PartitionedFile {
        let mut file = PartitionedFile::new(format!("symbol={symbol}/{from}.parquet"), bytes);
        file.partition_values = vec![ScalarValue::Utf8(Some(symbol.into()))];
        let ts = |v| ScalarValue::TimestampMicrosecond(Some(v), None);
        let statistics = Statistics {
            num_rows: Precision::Exact(100),
            total_byte_size: Precision::Exact(bytes as usize),
            column_statistics: vec![ColumnStatistics {
                null_count: Precision::Exact(nulls),
                min_value: Precision::Exact(ts(from)),
                max_value: Precision::Exact(ts(to)),
                ..ColumnStatistics::new_unknown()
            }],
        };
        file.with_statistics(Arc::new(statistics))
    }

    fn bytes(group: &FileGroup) -> u64 {
        group.iter().map(|f| f.object_meta.size).sum()
    }

    /// Each group's files, as `symbol/from`, in the group's order.
    fn names(groups: &[FileGroup]) -> Vec<Vec<String>> {
        groups
            .iter()
            .map(|g| {
                g.iter()
                    .map(|f| f.object_meta.location.to_string())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn groups_are_balanced_by_bytes_and_keep_the_order() {
        // Two symbols, one file an hour, every other file three times as large.
        let mut files = Vec::new();
        for symbol in ["AAA", "BBB"] {
            for hour in 0..8 {
                let size = if hour % 2 == 0 { 3_000 } else { 1_000 };
                files.push(file(symbol, hour * 100, hour * 100 + 99, size, 0));
            }
        }
        let (order, schema) = (symbol_ts(), schema());
        let groups = ordered_groups(&files, &order, 2, &schema).unwrap();
        assert_eq!(groups.len(), 2);
        let sizes: Vec<u64> = groups.iter().map(bytes).collect();
        assert_eq!(sizes.iter().sum::<u64>(), 32_000);
        // Apart by less than the largest file.
        assert!(sizes[0].abs_diff(sizes[1]) < 3_000, "{sizes:?}");
        // Every group follows the order: by symbol, then by time.
        for group in names(&groups) {
            let mut sorted = group.clone();
            sorted.sort_by_key(|name| {
                let (symbol, from) = name.split_once('/').unwrap();
                (
                    symbol.to_string(),
                    from.trim_end_matches(".parquet").parse::<i64>().unwrap(),
                )
            });
            assert_eq!(group, sorted);
        }
        // DataFusion's packing deals out the same files by their number, in turn: 8 each, but all
        // the large files in one group. One core would idle for the last two thirds of it.
        let by_count = FileScanConfig::split_groups_by_statistics_with_target_partitions(
            &schema,
            &[FileGroup::new(files.clone())],
            &order,
            2,
        )
        .unwrap();
        let sizes: Vec<u64> = by_count.iter().map(bytes).collect();
        assert_eq!(
            by_count.iter().map(FileGroup::len).collect::<Vec<_>>(),
            [8, 8]
        );
        assert_eq!(sizes, [24_000, 8_000]);
    }

    #[test]
    fn files_that_do_not_fit_the_groups_in_order_are_refused() {
        let (order, schema) = (symbol_ts(), schema());
        // Three files over the same hour of one symbol need three ordered groups.
        let overlapping: Vec<_> = (0..3).map(|i| file("AAA", i, 100 + i, 1_000, 0)).collect();
        assert!(ordered_groups(&overlapping, &order, 2, &schema).is_none());
        let three = ordered_groups(&overlapping, &order, 3, &schema).unwrap();
        assert_eq!(
            three.iter().map(FileGroup::len).collect::<Vec<_>>(),
            [1, 1, 1]
        );
        // A file whose times may be null does not say where its rows end.
        let nulls = [
            file("AAA", 0, 99, 1_000, 0),
            file("AAA", 100, 199, 1_000, 3),
        ];
        assert!(ordered_groups(&nulls, &order, 2, &schema).is_none());
        // Touching files (one ends where the next begins) may not follow each other.
        let touching = [
            file("AAA", 0, 100, 1_000, 0),
            file("AAA", 100, 199, 1_000, 0),
        ];
        let groups = ordered_groups(&touching, &order, 2, &schema).unwrap();
        assert_eq!(groups.len(), 2);
        assert!(ordered_groups(&touching, &order, 1, &schema).is_none());
    }
}
