//! The rest of an operator's input as a plan of its own: how ticklake's operators hand over to
//! DataFusion's when their shortcut stops paying (the top-K to a sort when its kept rows outgrow the
//! memory limit, the run aggregate to the hash aggregate when runs are short).

use std::fmt;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::Result;
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::physical_expr::LexOrdering;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};
use futures::Stream;

/// `rest` (batches of `schema`) as a one-partition plan that reads it once.
pub(crate) fn rest_as_plan(
    schema: SchemaRef,
    rest: impl Stream<Item = Result<RecordBatch>> + Send + 'static,
) -> Result<Arc<dyn ExecutionPlan>> {
    let source = OnceStream::new(Box::pin(RecordBatchStreamAdapter::new(
        Arc::clone(&schema),
        rest,
    )));
    Ok(Arc::new(StreamingTableExec::try_new(
        schema,
        vec![Arc::new(source)],
        None,
        Vec::<LexOrdering>::new(),
        false,
        None,
    )?))
}

/// A stream handed to a plan that executes it once.
struct OnceStream {
    schema: SchemaRef,
    stream: std::sync::Mutex<Option<SendableRecordBatchStream>>,
}

impl OnceStream {
    fn new(stream: SendableRecordBatchStream) -> Self {
        OnceStream {
            schema: stream.schema(),
            stream: std::sync::Mutex::new(Some(stream)),
        }
    }
}

impl fmt::Debug for OnceStream {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("OnceStream")
    }
}

impl PartitionStream for OnceStream {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let taken = self.stream.lock().ok().and_then(|mut s| s.take());
        taken.unwrap_or_else(|| {
            let error = DataFusionError::Internal("the rest of the input was read already".into());
            Box::pin(RecordBatchStreamAdapter::new(
                Arc::clone(&self.schema),
                futures::stream::once(async move { Err(error) }),
            ))
        })
    }
}
