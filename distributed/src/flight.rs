//! Samples from actors to learners over Arrow Flight (an existing transport: gRPC `DoPut` of Arrow IPC record
//! batches), with back-pressure.
//!
//! The learner runs an [`Inbox`]: a Flight server whose `DoPut` decodes each incoming stream into record batches
//! and hands the whole put (one [`Delivery`]) to a bounded queue. When the queue is full, `DoPut` waits before
//! acknowledging, and an actor's [`send_batches`] waits with it: a learner that falls behind slows its actors
//! instead of buffering without bound. Each put names its sender (the Flight descriptor's path) and may carry
//! application metadata (the first message's `app_metadata`: e.g. which round the batches belong to). What the
//! batches and the metadata hold (the Sample schema, a round's envelope) is the caller's: this module moves them
//! only. A put is delivered whole: Flight splits a large batch into several messages, and a put of no rows
//! still arrives (with its metadata).
use anyhow::{Context, Result};
use arrow::record_batch::RecordBatch;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status, Streaming};

/// One put as it arrived: the sender's name, its metadata and its record batches in order.
#[derive(Debug)]
pub struct Delivery {
    pub sender: String,
    pub metadata: bytes::Bytes,
    pub batches: Vec<RecordBatch>,
}

/// The learner's end: a Flight server and the bounded queue of what it received.
pub struct Inbox {
    addr: SocketAddr,
    rx: mpsc::Receiver<Delivery>,
    _stop: oneshot::Sender<()>,
}

impl Inbox {
    /// Starts a Flight server on `bind` (port 0: any free port) on `rt`, keeping at most `capacity` received
    /// puts; a `DoPut` waits while the queue is full.
    pub fn serve(rt: &tokio::runtime::Runtime, bind: SocketAddr, capacity: usize) -> Result<Self> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let (stop, stopped) = oneshot::channel::<()>();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(bind))
            .with_context(|| format!("sample inbox: binding {bind}"))?;
        let addr = listener.local_addr()?;
        let service = FlightServiceServer::new(SampleService { tx });
        rt.spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!("sample inbox on {addr}: {e}");
            }
        });
        Ok(Self {
            addr,
            rx,
            _stop: stop,
        })
    }

    /// The address actors send to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The next put, waiting at most `timeout` (None: nothing arrived in time). Call from outside the runtime.
    pub fn recv_timeout(
        &mut self,
        rt: &tokio::runtime::Runtime,
        timeout: Duration,
    ) -> Option<Delivery> {
        rt.block_on(async {
            tokio::time::timeout(timeout, self.rx.recv())
                .await
                .ok()
                .flatten()
        })
    }

    /// The next put (None once the server is gone).
    pub async fn recv(&mut self) -> Option<Delivery> {
        self.rx.recv().await
    }
}

/// Sends `batches` of `schema` (with `metadata`) to the inbox at `addr` in one `DoPut` named `sender`; returns
/// once the learner has taken the put into its queue (so it waits while the queue is full). Returns the rows
/// acknowledged. The schema message always goes first, so a put of no batches still carries its metadata.
pub async fn send_batches(
    addr: SocketAddr,
    sender: &str,
    metadata: bytes::Bytes,
    schema: arrow::datatypes::SchemaRef,
    batches: Vec<RecordBatch>,
) -> Result<usize> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await
        .with_context(|| format!("connecting to the sample inbox at {addr}"))?;
    let mut client = arrow_flight::FlightClient::new(channel);
    let data = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(FlightDescriptor::new_path(vec![sender.to_string()])))
        .with_metadata(metadata)
        .with_schema(schema)
        .build(futures::stream::iter(batches.into_iter().map(Ok)));
    let acks: Vec<PutResult> = client
        .do_put(data)
        .await
        .with_context(|| format!("sending samples to {addr}"))?
        .try_collect()
        .await
        .with_context(|| format!("sending samples to {addr}"))?;
    let mut rows = 0usize;
    for a in acks {
        let n: [u8; 8] = a.app_metadata.as_ref().try_into().unwrap_or_default();
        rows += u64::from_le_bytes(n) as usize;
    }
    Ok(rows)
}

struct SampleService {
    tx: mpsc::Sender<Delivery>,
}

type Stream<T> = BoxStream<'static, Result<T, Status>>;

fn unimplemented<T>(what: &str) -> Result<T, Status> {
    Err(Status::unimplemented(format!(
        "the sample inbox only takes DoPut, not {what}"
    )))
}

#[tonic::async_trait]
impl FlightService for SampleService {
    type HandshakeStream = Stream<HandshakeResponse>;
    type ListFlightsStream = Stream<FlightInfo>;
    type DoGetStream = Stream<FlightData>;
    type DoPutStream = Stream<PutResult>;
    type DoActionStream = Stream<arrow_flight::Result>;
    type ListActionsStream = Stream<ActionType>;
    type DoExchangeStream = Stream<FlightData>;

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        // The first message carries the descriptor (the sender's name) and the put's metadata; the decoder
        // drops both, so note them here.
        let head = Arc::new(Mutex::new((String::new(), bytes::Bytes::new())));
        let seen = head.clone();
        let mut first = true;
        let data = request.into_inner().map(move |m| {
            let m = m.map_err(arrow_flight::error::FlightError::from)?;
            let mut h = seen.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(d) = &m.flight_descriptor {
                h.0 = d.path.join("/");
            }
            if std::mem::take(&mut first) {
                h.1 = m.app_metadata.clone();
            }
            Ok(m)
        });
        let mut stream = FlightRecordBatchStream::new_from_flight_data(data);
        let (mut rows, mut batches) = (0u64, Vec::new());
        while let Some(batch) = stream.next().await {
            let batch =
                batch.map_err(|e| Status::invalid_argument(format!("bad record batch: {e}")))?;
            rows += batch.num_rows() as u64;
            batches.push(batch);
        }
        let (sender, metadata) = head.lock().unwrap_or_else(|e| e.into_inner()).clone();
        // Waits while the learner's queue is full: back-pressure to the sender.
        self.tx
            .send(Delivery {
                sender,
                metadata,
                batches,
            })
            .await
            .map_err(|_| Status::unavailable("the learner's sample inbox is closed"))?;
        let ack = PutResult {
            app_metadata: rows.to_le_bytes().to_vec().into(),
        };
        Ok(Response::new(
            futures::stream::once(async { Ok(ack) }).boxed(),
        ))
    }

    async fn handshake(
        &self,
        _: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        unimplemented("Handshake")
    }
    async fn list_flights(
        &self,
        _: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        unimplemented("ListFlights")
    }
    async fn get_flight_info(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        unimplemented("GetFlightInfo")
    }
    async fn poll_flight_info(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        unimplemented("PollFlightInfo")
    }
    async fn get_schema(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        unimplemented("GetSchema")
    }
    async fn do_get(&self, _: Request<Ticket>) -> Result<Response<Self::DoGetStream>, Status> {
        unimplemented("DoGet")
    }
    async fn do_action(
        &self,
        _: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        unimplemented("DoAction")
    }
    async fn list_actions(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        unimplemented("ListActions")
    }
    async fn do_exchange(
        &self,
        _: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        unimplemented("DoExchange")
    }
}
