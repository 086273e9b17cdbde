//! The Arrow Flight SQL service: statement and prepared-statement queries (GetFlightInfo,
//! then DoGet on the ticket), GetSqlInfo, GetCatalogs, GetDbSchemas and GetTables. Updates
//! are refused: the inventory is read-only to clients.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, Any, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetSqlInfo, CommandGetTables, CommandPreparedStatementQuery, CommandStatementQuery,
    CommandStatementUpdate, ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    Action, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse,
    IpcMessage, SchemaAsIpc, Ticket,
};
use duckdb::arrow::datatypes::Schema;
use futures::{Stream, TryStreamExt as _};
use prost::Message as _;
use tonic::{Request, Response, Status, Streaming};

use crate::query::{Engine, QueryError, Running};
use crate::socket::PeerInfo;

/// The database (catalog) name clients see.
pub const CATALOG: &str = "kq";

static SQL_INFO: LazyLock<SqlInfoData> = LazyLock::new(|| {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "kqd");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(SqlInfo::FlightSqlServerArrowVersion, "1.3");
    b.append(SqlInfo::FlightSqlServerReadOnly, true);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    b.append(SqlInfo::FlightSqlServerTransaction, 0i32);
    b.append(SqlInfo::FlightSqlServerCancel, false);
    b.build().expect("static SqlInfo builds")
});

/// Queries parked between GetFlightInfo and DoGet are dropped (and interrupted) after this.
const PARK_TIMEOUT: Duration = Duration::from_secs(60);

type Parked = Arc<Mutex<HashMap<Vec<u8>, (Instant, Running)>>>;

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
            r = self.engine.start(sql) => r.map_err(to_status)?,
            _ = gone.cancelled() => {
                tracing::debug!("client hung up during GetFlightInfo");
                return Err(Status::cancelled("the client went away"));
            }
        };
        let schema = running.schema.clone();
        let handle = uuid_bytes();
        {
            let mut parked = self.parked.lock().unwrap_or_else(|e| e.into_inner());
            parked.retain(|_, (at, r)| {
                let keep = at.elapsed() < PARK_TIMEOUT;
                if !keep {
                    r.cancel.cancel();
                }
                keep
            });
            parked.insert(handle.clone(), (Instant::now(), running));
        }
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
    }
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
        self.plan(query.query, request).await
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let sql = String::from_utf8(cmd.prepared_statement_handle.to_vec())
            .map_err(|_| Status::invalid_argument("the prepared statement handle is not kq's"))?;
        self.plan(sql, request).await
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let (_, running) = self
            .parked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(ticket.statement_handle.as_ref())
            .ok_or_else(|| {
                Status::not_found("unknown or expired ticket: call GetFlightInfo again")
            })?;
        let Running {
            schema,
            batches,
            cancel,
        } = running;
        let guard = CancelOnDrop(cancel);
        let stream = futures::stream::unfold((batches, guard), |(mut rx, guard)| async move {
            let item = rx.recv().await?;
            Some((
                item.map_err(|e| FlightError::Tonic(Box::new(to_status(e)))),
                (rx, guard),
            ))
        });
        Ok(Response::new(encode(schema, stream)))
    }

    /// `DoGet` with a follow request streams incidents as they are recorded or updated,
    /// one batch each, until the client goes away.
    async fn do_get_fallback(
        &self,
        _request: Request<Ticket>,
        message: Any,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        if message.type_url != kq_schema::follow::FOLLOW_INCIDENTS {
            return Err(Status::unimplemented(format!(
                "kqd does not serve {}",
                message.type_url
            )));
        }
        let filter = kq_schema::follow::FollowIncidents::decode(&message.value)
            .map_err(Status::invalid_argument)?;
        let store = self.engine.store().clone();
        let schema = store.incidents_schema.clone();
        let rx = store.follow_incidents();
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
        Ok(Response::new(encode(schema, stream)))
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        // Prepared statements are stateless: the handle is the SQL itself. Starting it here
        // reports bad SQL at prepare time and gives clients the result schema.
        let running = self
            .engine
            .start(query.query.clone())
            .await
            .map_err(to_status)?;
        running.cancel.cancel();
        let IpcMessage(schema) = SchemaAsIpc::new(&running.schema, &IpcWriteOptions::default())
            .try_into()
            .map_err(|e: duckdb::arrow::error::ArrowError| Status::internal(e.to_string()))?;
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: query.query.into_bytes().into(),
            dataset_schema: schema,
            parameter_schema: Default::default(),
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
        Err(Status::permission_denied(
            "read-only: the inventory is written only by kqd",
        ))
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
        b.append(CATALOG, "main");
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
        let mut b = query.into_builder();
        for t in kq_schema::CATALOG.iter() {
            let running = self
                .engine
                .start(format!("SELECT * FROM main.{} LIMIT 0", t.name))
                .await
                .map_err(to_status)?;
            running.cancel.cancel();
            b.append(
                CATALOG,
                "main",
                t.name,
                if t.view.is_some() { "VIEW" } else { "TABLE" },
                &running.schema,
            )
            .map_err(Status::from)?;
        }
        let schema = b.schema();
        Ok(Response::new(one_batch(schema, b.build())))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
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
