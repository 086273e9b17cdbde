//! The Arrow Flight SQL service: statement and prepared-statement queries (GetFlightInfo,
//! then DoGet on the ticket; parameters bound with DoPut), and the metadata calls clients
//! make before they query (`metadata`). Updates are refused: the inventory is read-only to
//! clients.

mod metadata;
mod prepared;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, Any, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetPrimaryKeys, CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables,
    CommandGetXdbcTypeInfo, CommandPreparedStatementQuery, CommandPreparedStatementUpdate,
    CommandStatementQuery, CommandStatementUpdate, DoPutPreparedStatementResult, ProstMessageExt,
    SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    Action, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse,
    Ticket,
};
use duckdb::arrow::datatypes::Schema;
use duckdb::types::Value;
use futures::{Stream, StreamExt as _, TryStreamExt as _};
use prost::Message as _;
use tonic::{Request, Response, Status, Streaming};

use crate::query::{Engine, QueryError, Running};
use crate::socket::PeerInfo;

use metadata::{CATALOG, SCHEMA, SQL_INFO, XDBC_TYPES};
use prepared::Prepared;

/// Queries parked between GetFlightInfo and DoGet are dropped (and interrupted) after this.
const PARK_TIMEOUT: Duration = Duration::from_secs(60);

/// Queries that have answered GetFlightInfo and wait for their DoGet, by ticket handle.
type Parked = Arc<Mutex<HashMap<Vec<u8>, ParkedQuery>>>;

/// A parked query and the task that cancels it if nobody redeems its ticket.
struct ParkedQuery {
    running: Running,
    expiry: tokio::task::AbortHandle,
}

/// kqd's Flight SQL service.
#[derive(Clone)]
pub struct KqFlightSql {
    engine: Arc<Engine>,
    parked: Parked,
}

impl KqFlightSql {
    pub fn new(engine: Arc<Engine>) -> Self {
        KqFlightSql {
            engine,
            parked: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Starts the query so that its schema (and any SQL error) is known at GetFlightInfo,
    /// parks it, and returns a FlightInfo whose ticket DoGet redeems.
    async fn plan(
        &self,
        sql: String,
        params: Vec<Value>,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        // A query runs to its first batch before GetFlightInfo answers. If the client hangs up
        // meanwhile, dropping `start` interrupts DuckDB (tonic does not drop the request).
        let gone = request
            .extensions()
            .get::<PeerInfo>()
            .map(|p| p.gone.clone());
        tracing::debug!(tracked = gone.is_some(), "planning query");
        let gone = gone.unwrap_or_default();
        let descriptor = request.into_inner();
        let running = tokio::select! {
            r = self.engine.start_with(sql, params) => r.map_err(to_status)?,
            _ = gone.cancelled() => {
                tracing::debug!("client hung up during GetFlightInfo");
                return Err(Status::cancelled("the client went away"));
            }
        };
        let schema = running.schema.clone();
        let handle = uuid_bytes();
        // DuckDB answers GetFlightInfo as soon as the plan is ready and runs the query on in
        // the background, so a parked query is cancelled as soon as the connection that
        // planned it closes (a client killed before its DoGet), or when its ticket expires.
        // Waiting for the next GetFlightInfo to notice would leave it burning every core.
        let parked = self.parked.clone();
        let key = handle.clone();
        let expiry = tokio::spawn(async move {
            tokio::select! {
                _ = gone.cancelled() => {}
                _ = tokio::time::sleep(PARK_TIMEOUT) => {}
            }
            let left = parked
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
            if let Some(p) = left {
                tracing::debug!("a planned query was never fetched; cancelling it");
                p.running.cancel.cancel();
            }
        })
        .abort_handle();
        self.parked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(handle.clone(), ParkedQuery { running, expiry });
        let ticket = TicketStatementQuery {
            statement_handle: handle.into(),
        };
        let endpoint =
            FlightEndpoint::new().with_ticket(Ticket::new(ticket.as_any().encode_to_vec()));
        let info = FlightInfo::new()
            .try_with_schema(&schema)
            .map_err(|e| Status::internal(format!("encoding the schema: {e}")))?
            .with_endpoint(endpoint)
            .with_descriptor(descriptor);
        Ok(Response::new(info))
    }
}

impl KqFlightSql {
    /// A follow stream that ends, telling its client why, when kqd stops: followers never
    /// end by themselves, and would hold the shutdown open.
    fn until_stopping<S>(
        &self,
        stream: S,
    ) -> impl Stream<Item = Result<duckdb::arrow::record_batch::RecordBatch, FlightError>> + Send + 'static
    where
        S: Stream<Item = Result<duckdb::arrow::record_batch::RecordBatch, FlightError>>
            + Send
            + 'static,
    {
        let stop = self.engine.stopping().clone().cancelled_owned();
        let why = futures::stream::once(async { Err(flight_error(crate::query::stopping())) });
        stream.take_until(stop).chain(why)
    }

    fn follow_incidents(&self, request: &[u8]) -> Result<Response<DoGetStream>, Status> {
        let filter = kq_schema::follow::FollowIncidents::decode(request)
            .map_err(Status::invalid_argument)?;
        let store = self.engine.store().clone();
        let schema = store.incidents_schema.clone();
        let rx = store.follow_incidents();
        tracing::debug!("a client follows incidents");
        let stream =
            futures::stream::unfold((rx, store, filter), |(mut rx, store, filter)| async move {
                loop {
                    match rx.recv().await {
                        Ok(row) => {
                            if !filter.matches(
                                &row.context,
                                row.namespace.as_deref(),
                                &row.severity,
                            ) {
                                continue;
                            }
                            let batch = store
                                .incident_batch(&[row])
                                .map_err(|e| FlightError::ExternalError(Box::new(e)));
                            return Some((batch, (rx, store, filter)));
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            tracing::warn!(
                                skipped = n,
                                "an incident follower fell behind; skipped some"
                            );
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                    }
                }
            });
        Ok(Response::new(encode(schema, self.until_stopping(stream))))
    }

    fn follow_commits(&self, request: &[u8]) -> Result<Response<DoGetStream>, Status> {
        use duckdb::arrow::array::StringArray;
        use duckdb::arrow::datatypes::{DataType, Field};
        use tokio::sync::broadcast::error::RecvError;
        let filter =
            kq_schema::follow::FollowCommits::decode(request).map_err(Status::invalid_argument)?;
        let schema = Arc::new(Schema::new(vec![Field::new(
            "tables",
            DataType::Utf8,
            false,
        )]));
        let rx = self.engine.store().follow_commits();
        tracing::debug!("a client follows commits");
        let out = schema.clone();
        let stream = futures::stream::unfold((rx, filter), move |(mut rx, filter)| {
            let schema = out.clone();
            async move {
                loop {
                    let tables = match rx.recv().await {
                        Ok(t) if filter.matches(&t) => t.join(","),
                        Ok(_) => continue,
                        // A follower that fell behind missed commits: it hears of one now,
                        // which is all it needs to look again.
                        Err(RecvError::Lagged(_)) => "*".to_string(),
                        Err(RecvError::Closed) => return None,
                    };
                    let batch = duckdb::arrow::record_batch::RecordBatch::try_new(
                        schema,
                        vec![Arc::new(StringArray::from(vec![tables]))],
                    )
                    .map_err(FlightError::Arrow);
                    return Some((batch, (rx, filter)));
                }
            }
        });
        Ok(Response::new(encode(schema, self.until_stopping(stream))))
    }
}

fn uuid_bytes() -> Vec<u8> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("q{}-{n}", std::process::id()).into_bytes()
}

/// SQL errors are the client's (InvalidArgument); read-only refusals are PermissionDenied.
pub fn to_status(e: QueryError) -> Status {
    match e {
        QueryError::Sql(m) => Status::invalid_argument(m),
        QueryError::ReadOnly(m) => Status::permission_denied(m),
        QueryError::Internal(m) => Status::internal(m),
        QueryError::Stopping(m) => Status::unavailable(m),
    }
}

/// A query's error as the Flight encoder carries it to the client.
fn flight_error(e: QueryError) -> FlightError {
    FlightError::Tonic(Box::new(to_status(e)))
}

type DoGetStream =
    Pin<Box<dyn Stream<Item = Result<arrow_flight::FlightData, Status>> + Send + 'static>>;

/// Cancels the query when the client stops reading before the end (after the end it is a
/// no-op).
struct CancelOnDrop(crate::query::Cancel);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// A metadata result: one batch.
fn one_batch(
    schema: Arc<Schema>,
    batch: Result<duckdb::arrow::record_batch::RecordBatch, FlightError>,
) -> DoGetStream {
    encode(schema, futures::stream::once(async move { batch }))
}

fn encode(
    schema: Arc<Schema>,
    batches: impl Stream<Item = Result<duckdb::arrow::record_batch::RecordBatch, FlightError>>
    + Send
    + 'static,
) -> DoGetStream {
    Box::pin(
        FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(batches)
            .map_err(Status::from),
    )
}

#[tonic::async_trait]
impl FlightSqlService for KqFlightSql {
    type FlightService = KqFlightSql;

    async fn do_handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<
        Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>,
        Status,
    > {
        // The socket's permissions and the peer uid check are the authentication.
        let resp = HandshakeResponse {
            protocol_version: 0,
            payload: Default::default(),
        };
        Ok(Response::new(Box::pin(futures::stream::once(async {
            Ok(resp)
        }))))
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.plan(query.query, Vec::new(), request).await
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let prepared = Prepared::from_handle(&cmd.prepared_statement_handle)?;
        self.plan(prepared.sql, prepared.params, request).await
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let ParkedQuery { running, expiry } = self
            .parked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(ticket.statement_handle.as_ref())
            .ok_or_else(|| {
                Status::not_found("unknown or expired ticket: call GetFlightInfo again")
            })?;
        expiry.abort();
        let Running {
            schema,
            batches,
            cancel,
        } = running;
        let guard = CancelOnDrop(cancel);
        let stream = futures::stream::unfold(Some((batches, guard)), |state| async move {
            let (mut rx, guard) = state?;
            match rx.recv().await {
                Some(item) => Some((item.map_err(flight_error), Some((rx, guard)))),
                // Batches that stop because kqd is stopping are not the whole result.
                None if guard.0.cut_short() => {
                    Some((Err(flight_error(crate::query::stopping())), None))
                }
                None => None,
            }
        });
        Ok(Response::new(encode(schema, stream)))
    }

    /// `DoGet` with a follow request streams, until the client goes away, incidents as
    /// they are recorded or updated, or the tables of each commit (one batch each).
    async fn do_get_fallback(
        &self,
        _request: Request<Ticket>,
        message: Any,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        match message.type_url.as_str() {
            kq_schema::follow::FOLLOW_INCIDENTS => self.follow_incidents(&message.value),
            kq_schema::follow::FOLLOW_COMMITS => self.follow_commits(&message.value),
            other => Err(Status::unimplemented(format!("kqd does not serve {other}"))),
        }
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        // Preparing reports bad SQL, and a write, at prepare time. A statement without
        // parameters is also started, to give clients the result schema; one with
        // parameters only has that once they are bound, at GetFlightInfo.
        let names = self.engine.parameters(&query.query).map_err(to_status)?;
        crate::query::check_read_only(&query.query).map_err(to_status)?;
        let dataset_schema = if names.is_empty() {
            let running = self
                .engine
                .start(query.query.clone())
                .await
                .map_err(to_status)?;
            running.cancel.cancel();
            prepared::schema_bytes(&running.schema)?
        } else {
            Default::default()
        };
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: Prepared::new(query.query).handle().into(),
            dataset_schema,
            parameter_schema: prepared::schema_bytes(&prepared::parameter_schema(&names))?,
        })
    }

    /// Binds parameter values: the handle given back carries them, and the client uses it
    /// for GetFlightInfo.
    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let mut prepared = Prepared::from_handle(&query.prepared_statement_handle)?;
        let batches: Vec<_> = FlightRecordBatchStream::new_from_flight_data(
            request
                .into_inner()
                .map_err(|s| FlightError::Tonic(Box::new(s))),
        )
        .try_collect()
        .await
        .map_err(|e| Status::invalid_argument(format!("reading the parameters: {e}")))?;
        prepared.bind(&batches)?;
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(prepared.handle().into()),
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        Ok(())
    }

    async fn do_put_statement_update(
        &self,
        _ticket: CommandStatementUpdate,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(read_only())
    }

    async fn do_put_prepared_statement_update(
        &self,
        _query: CommandPreparedStatementUpdate,
        _request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        Err(read_only())
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(&SQL_INFO).schema();
        metadata_info(query.as_any(), &schema, request.into_inner())
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let b = query.into_builder(&SQL_INFO);
        let schema = b.schema();
        Ok(Response::new(one_batch(schema, b.build())))
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        metadata_info(query.as_any(), &schema, request.into_inner())
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut b = query.into_builder();
        b.append(CATALOG);
        let schema = b.schema();
        Ok(Response::new(one_batch(schema, b.build())))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        metadata_info(query.as_any(), &schema, request.into_inner())
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut b = query.into_builder();
        b.append(CATALOG, SCHEMA);
        let schema = b.schema();
        Ok(Response::new(one_batch(schema, b.build())))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        metadata_info(query.as_any(), &schema, request.into_inner())
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let pattern = query.table_name_filter_pattern.clone();
        let mut b = query.into_builder();
        for t in metadata::candidate_tables(pattern.as_deref()) {
            let running = self
                .engine
                .start(format!("SELECT * FROM main.{} LIMIT 0", t.name))
                .await
                .map_err(to_status)?;
            running.cancel.cancel();
            let schema = metadata::described(t, &running.schema);
            b.append(CATALOG, SCHEMA, t.name, metadata::table_type(t), &schema)
                .map_err(Status::from)?;
        }
        let schema = b.schema();
        Ok(Response::new(one_batch(schema, b.build())))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        metadata_info(query.as_any(), &schema, request.into_inner())
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut b = query.into_builder();
        metadata::TABLE_TYPES.iter().for_each(|t| b.append(t));
        let schema = b.schema();
        Ok(Response::new(one_batch(schema, b.build())))
    }

    async fn get_flight_info_primary_keys(
        &self,
        query: CommandGetPrimaryKeys,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        metadata_info(
            query.as_any(),
            &metadata::primary_keys_schema(),
            request.into_inner(),
        )
    }

    /// kq's tables declare no primary keys, so the answer is always empty.
    async fn do_get_primary_keys(
        &self,
        _query: CommandGetPrimaryKeys,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let schema = Arc::new(metadata::primary_keys_schema());
        let empty = duckdb::arrow::record_batch::RecordBatch::new_empty(schema.clone());
        Ok(Response::new(one_batch(schema, Ok(empty))))
    }

    async fn get_flight_info_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder(&XDBC_TYPES).schema();
        metadata_info(query.as_any(), &schema, request.into_inner())
    }

    async fn do_get_xdbc_type_info(
        &self,
        query: CommandGetXdbcTypeInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let b = query.into_builder(&XDBC_TYPES);
        let schema = b.schema();
        Ok(Response::new(one_batch(schema, b.build())))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

fn read_only() -> Status {
    Status::permission_denied("read-only: the inventory is written only by kqd")
}

fn metadata_info(
    cmd: Any,
    schema: &Schema,
    descriptor: FlightDescriptor,
) -> Result<Response<FlightInfo>, Status> {
    let endpoint = FlightEndpoint::new().with_ticket(Ticket::new(cmd.encode_to_vec()));
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(format!("encoding the schema: {e}")))?
        .with_endpoint(endpoint)
        .with_descriptor(descriptor);
    Ok(Response::new(info))
}
