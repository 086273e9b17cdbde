//! The Flight SQL client: connects to kqd's Unix socket and runs one statement at a time.

use std::path::{Path, PathBuf};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow_flight::FlightDescriptor;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::{CommandStatementQuery, ProstMessageExt as _};
use futures::{StreamExt as _, TryStreamExt as _};
use hyper_util::rt::TokioIo;
use prost::Message as _;
use tonic::transport::{Channel, Endpoint, Uri};

/// What went wrong, worded for the person at the prompt.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "kqd is not running at {socket} — start it with `kqd` (or `systemctl --user start kqd`): {reason}"
    )]
    NotRunning { socket: PathBuf, reason: String },
    #[error("kqd stopped ({0}); run it again once kqd is back")]
    Stopped(String),
    #[error(
        "kqd at {socket} refused the connection: it belongs to another user (uid {owner}; you are uid {uid}); run your own kqd, or pass --socket"
    )]
    OtherUser {
        socket: PathBuf,
        owner: u32,
        uid: u32,
    },
    #[error("your SQL is wrong: {0}")]
    Sql(String),
    #[error("{0}")]
    ReadOnly(String),
    #[error("kqd failed: {0}")]
    Server(String),
}

impl ClientError {
    /// 2 when kqd cannot be reached, 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::NotRunning { .. }
            | ClientError::OtherUser { .. }
            | ClientError::Stopped(_) => 2,
            _ => 1,
        }
    }

    fn from_status(s: tonic::Status, socket: &Path) -> ClientError {
        match s.code() {
            tonic::Code::InvalidArgument => ClientError::Sql(s.message().to_string()),
            tonic::Code::PermissionDenied => ClientError::ReadOnly(s.message().to_string()),
            tonic::Code::Unavailable if s.message() == kq_schema::follow::SHUTTING_DOWN => {
                ClientError::Stopped(s.message().to_string())
            }
            tonic::Code::Unavailable => unreachable(socket, s.message().to_string()),
            // kqd closes a connection from another user as soon as it accepts it, which
            // tonic reports as a bare transport error.
            _ => other_user(socket).unwrap_or_else(|| ClientError::Server(s.message().to_string())),
        }
    }
}

/// Why nothing answered at `socket`: it belongs to another user, or no kqd runs there.
fn unreachable(socket: &Path, reason: String) -> ClientError {
    other_user(socket).unwrap_or_else(|| ClientError::NotRunning {
        socket: socket.to_path_buf(),
        reason,
    })
}

/// The error to show when `socket` belongs to another user. kqd closes connections from
/// other users, and a socket directory of another user's cannot even be entered; both read
/// as a bare transport or permission error, so whose the socket is decides which message
/// the person sees: the socket's owner, or the owner of the directory that kept us from it.
fn other_user(socket: &Path) -> Option<ClientError> {
    use std::os::unix::fs::MetadataExt as _;
    let uid = rustix::process::geteuid().as_raw();
    let mut denied = false;
    for p in socket.ancestors() {
        match std::fs::metadata(p) {
            Ok(m) => {
                return (m.uid() != uid && (p == socket || denied)).then(|| {
                    ClientError::OtherUser {
                        socket: socket.to_path_buf(),
                        owner: m.uid(),
                        uid,
                    }
                });
            }
            Err(e) => denied = e.kind() == std::io::ErrorKind::PermissionDenied,
        }
    }
    None
}

/// The result of one statement.
pub struct QueryResult {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

impl QueryResult {
    pub fn rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }
}

/// A result's batches as they arrive.
pub type BatchStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<RecordBatch, ClientError>> + Send>>;

/// A connection to kqd.
pub struct Client {
    inner: FlightServiceClient<Channel>,
    socket: PathBuf,
}

impl Client {
    /// Connects to the socket; fails at once when nothing listens there.
    pub async fn connect(socket: &Path) -> Result<Client, ClientError> {
        let not_running = |reason: String| unreachable(socket, reason);
        // Probe first, so a missing daemon is reported plainly rather than as a gRPC error.
        tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|e| not_running(e.to_string()))?;
        let path = socket.to_path_buf();
        let channel = Endpoint::try_from("http://kqd.local")
            .map_err(|e| not_running(e.to_string()))?
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .map_err(|e| not_running(e.to_string()))?;
        let inner = FlightServiceClient::new(channel).max_decoding_message_size(64 << 20);
        Ok(Client {
            inner,
            socket: socket.to_path_buf(),
        })
    }

    /// Runs one statement and collects its result.
    pub async fn query(&mut self, sql: &str) -> Result<QueryResult, ClientError> {
        let (schema, batches) = self.query_stream(sql).await?;
        let batches = batches.try_collect().await?;
        Ok(QueryResult { schema, batches })
    }

    /// Runs one statement; its batches arrive as the caller reads them, and dropping the
    /// stream before its end stops the query.
    pub async fn query_stream(
        &mut self,
        sql: &str,
    ) -> Result<(SchemaRef, BatchStream), ClientError> {
        let cmd = CommandStatementQuery {
            query: sql.to_string(),
            transaction_id: None,
        };
        let descriptor = FlightDescriptor::new_cmd(cmd.as_any().encode_to_vec());
        let info = self
            .inner
            .get_flight_info(descriptor)
            .await
            .map_err(|s| ClientError::from_status(s, &self.socket))?
            .into_inner();
        let schema: SchemaRef = std::sync::Arc::new(
            info.clone()
                .try_decode_schema()
                .map_err(|e| ClientError::Server(format!("bad schema from kqd: {e}")))?,
        );
        // kqd answers with one endpoint; any others would follow in order.
        let mut streams = Vec::new();
        for ep in info.endpoint {
            let Some(ticket) = ep.ticket else { continue };
            streams.push(self.do_get(ticket).await?);
        }
        Ok((schema, Box::pin(futures::stream::iter(streams).flatten())))
    }

    /// The record batches of one ticket, as they arrive.
    async fn do_get(
        &mut self,
        ticket: arrow_flight::Ticket,
    ) -> Result<impl futures::Stream<Item = Result<RecordBatch, ClientError>> + use<>, ClientError>
    {
        let stream = self
            .inner
            .do_get(ticket)
            .await
            .map_err(|s| ClientError::from_status(s, &self.socket))?
            .into_inner();
        let socket = self.socket.clone();
        Ok(FlightRecordBatchStream::new_from_flight_data(
            stream.map_err(|s| FlightError::Tonic(Box::new(s))),
        )
        .map_err(move |e| match e {
            FlightError::Tonic(s) => ClientError::from_status(*s, &socket),
            other => ClientError::Server(other.to_string()),
        }))
    }

    /// Streams, for each commit that wrote one of the filter's tables, the tables it wrote.
    pub async fn follow_commits(
        &mut self,
        filter: &kq_schema::follow::FollowCommits,
    ) -> Result<BatchStream, ClientError> {
        let any = arrow_flight::sql::Any {
            type_url: kq_schema::follow::FOLLOW_COMMITS.to_string(),
            value: filter.encode().into(),
        };
        Ok(Box::pin(
            self.do_get(arrow_flight::Ticket::new(any.encode_to_vec()))
                .await?,
        ))
    }

    /// Streams incidents as kqd records or updates them, until the caller stops reading.
    pub async fn follow_incidents(
        &mut self,
        filter: &kq_schema::follow::FollowIncidents,
    ) -> Result<impl futures::Stream<Item = Result<RecordBatch, ClientError>> + use<>, ClientError>
    {
        let any = arrow_flight::sql::Any {
            type_url: kq_schema::follow::FOLLOW_INCIDENTS.to_string(),
            value: filter.encode().into(),
        };
        self.do_get(arrow_flight::Ticket::new(any.encode_to_vec()))
            .await
    }
}
