//! The `jobworker.v1.JobService` implementation: authentication, authorization, validation,
//! then the [`Manager`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use proto::job_service_server::JobService;
use proto::{
    GetJobRequest, GetJobResponse, GetStatsRequest, GetStatsResponse, Job, JobEvent,
    ListJobsRequest, ListJobsResponse, OutputChunk, StartJobRequest, StartJobResponse,
    StopJobRequest, StopJobResponse, StreamOutputRequest, WatchJobRequest,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::auth::{self, Action, Caller};
use crate::config::Config;
use crate::db::ListFilter;
use crate::manager::{is_final, Manager, ManagerError};
use crate::validate;

/// A boxed response stream.
pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The service.
#[derive(Debug, Clone)]
pub struct Service {
    cfg: Arc<Config>,
    manager: Arc<Manager>,
    shutdown: watch::Receiver<bool>,
}

impl Service {
    /// A service over `manager`; its streams end when `shutdown` becomes true.
    pub fn new(
        cfg: Arc<Config>,
        manager: Arc<Manager>,
        shutdown: watch::Receiver<bool>,
    ) -> Service {
        Service {
            cfg,
            manager,
            shutdown,
        }
    }

    fn until_shutdown<T: Send + 'static>(
        &self,
        inner: impl Stream<Item = Result<T, Status>> + Send + 'static,
    ) -> BoxStream<T> {
        let mut rx = self.shutdown.clone();
        Box::pin(UntilShutdown {
            inner: Box::pin(inner),
            shutdown: Box::pin(async move {
                let _ = rx.wait_for(|v| *v).await;
            }),
        })
    }

    /// Loads a job the caller may act on; logs the decision. Unknown and hidden jobs are
    /// NOT_FOUND alike.
    fn authorized_job(
        &self,
        caller: &Caller,
        method: &str,
        action: Action,
        raw_id: &str,
    ) -> Result<Job, Status> {
        let id = validate::job_id(raw_id)?;
        let job = self.manager.get(&id).map_err(internal)?;
        auth::authorize(
            caller,
            method,
            action,
            Some(&id),
            job.as_ref().map(|j| j.owner.as_str()),
        )?;
        job.ok_or_else(|| auth::not_found(&id))
    }
}

/// Ends the inner stream when the shutdown future completes.
struct UntilShutdown<T> {
    inner: BoxStream<T>,
    shutdown: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl<T> Stream for UntilShutdown<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.shutdown.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        self.inner.as_mut().poll_next(cx)
    }
}

fn caller<T>(req: &Request<T>) -> Result<Caller, Status> {
    let certs = req.peer_certs();
    auth::caller_from_certs(certs.as_deref().map(|v| v.as_slice()))
}

fn internal(e: ManagerError) -> Status {
    match e {
        ManagerError::ShuttingDown => Status::unavailable("jobd is shutting down"),
        e => {
            tracing::error!(error = %e, "internal error");
            Status::internal(e.to_string())
        }
    }
}

#[tonic::async_trait]
impl JobService for Service {
    async fn start_job(
        &self,
        request: Request<StartJobRequest>,
    ) -> Result<Response<StartJobResponse>, Status> {
        let caller = caller(&request)?;
        auth::authorize(&caller, "StartJob", Action::Start, None, None)?;
        let spec = request.into_inner().spec;
        let limits = validate::spec(&self.cfg, spec.as_ref())?;
        let spec = spec.unwrap_or_default();
        let job = self
            .manager
            .start(&caller.name, spec, limits)
            .await
            .map_err(internal)?;
        Ok(Response::new(StartJobResponse { job: Some(job) }))
    }

    async fn stop_job(
        &self,
        request: Request<StopJobRequest>,
    ) -> Result<Response<StopJobResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let job = self.authorized_job(&caller, "StopJob", Action::Stop, &req.job_id)?;
        let grace = validate::grace(req.grace_period_ms)?;
        let job = self
            .manager
            .stop(&job.id, grace)
            .await
            .map_err(internal)?
            .unwrap_or(job);
        Ok(Response::new(StopJobResponse { job: Some(job) }))
    }

    async fn get_job(
        &self,
        request: Request<GetJobRequest>,
    ) -> Result<Response<GetJobResponse>, Status> {
        let caller = caller(&request)?;
        let job =
            self.authorized_job(&caller, "GetJob", Action::Read, &request.get_ref().job_id)?;
        Ok(Response::new(GetJobResponse { job: Some(job) }))
    }

    async fn list_jobs(
        &self,
        request: Request<ListJobsRequest>,
    ) -> Result<Response<ListJobsResponse>, Status> {
        let caller = caller(&request)?;
        let only_own = auth::authorize(&caller, "ListJobs", Action::List, None, None)?;
        let req = request.into_inner();
        let states = validate::states(&req.states)?;
        let limit = validate::page_size(req.page_size)?;
        let owner = match (only_own, req.owner.is_empty()) {
            (Some(own), true) => Some(own),
            (Some(own), false) if own == req.owner => Some(own),
            // A user asking for someone else's jobs sees none.
            (Some(_), false) => return Ok(Response::new(ListJobsResponse::default())),
            (None, true) => None,
            (None, false) => Some(req.owner),
        };
        let filter = ListFilter {
            states,
            owner,
            page_token: req.page_token,
            limit,
        };
        let (jobs, next_page_token) = self.manager.list(&filter).map_err(|e| match e {
            ManagerError::Db(crate::db::DbError::BadPageToken { token }) => {
                Status::invalid_argument(format!(
                    "page_token: {token:?} is not a token from a previous ListJobs"
                ))
            }
            e => internal(e),
        })?;
        Ok(Response::new(ListJobsResponse {
            jobs,
            next_page_token,
        }))
    }

    type StreamOutputStream = BoxStream<OutputChunk>;

    async fn stream_output(
        &self,
        request: Request<StreamOutputRequest>,
    ) -> Result<Response<Self::StreamOutputStream>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let job = self.authorized_job(&caller, "StreamOutput", Action::Read, &req.job_id)?;
        let log = self.manager.output(&job.id).map_err(internal)?;
        let rx = log.follow(req.offset, !req.no_follow);
        Ok(Response::new(self.until_shutdown(ReceiverStream::new(rx))))
    }

    type WatchJobStream = BoxStream<JobEvent>;

    async fn watch_job(
        &self,
        request: Request<WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let caller = caller(&request)?;
        let job =
            self.authorized_job(&caller, "WatchJob", Action::Read, &request.get_ref().job_id)?;
        let (tx, rx) = mpsc::channel(16);
        match self.manager.watch(&job.id) {
            None => {
                let _ = tx.try_send(Ok(JobEvent { job: Some(job) }));
            }
            Some(mut watch) => {
                tokio::spawn(async move {
                    loop {
                        let job = watch.borrow_and_update().clone();
                        let done = is_final(job.state);
                        if tx.send(Ok(JobEvent { job: Some(job) })).await.is_err() || done {
                            return;
                        }
                        tokio::select! {
                            r = watch.changed() => if r.is_err() { return },
                            _ = tx.closed() => return,
                        }
                    }
                });
            }
        }
        Ok(Response::new(self.until_shutdown(ReceiverStream::new(rx))))
    }

    async fn get_stats(
        &self,
        request: Request<GetStatsRequest>,
    ) -> Result<Response<GetStatsResponse>, Status> {
        let caller = caller(&request)?;
        let job =
            self.authorized_job(&caller, "GetStats", Action::Read, &request.get_ref().job_id)?;
        let stats = self.manager.stats(&job.id).await.map_err(internal)?;
        let resp = match stats {
            None => GetStatsResponse::default(),
            Some(s) => GetStatsResponse {
                cpu_usage_ns: s.cpu_usage_ns,
                memory_current_bytes: s.memory_current_bytes,
                memory_peak_bytes: s.memory_peak_bytes,
                io_read_bytes: s.io_read_bytes,
                io_write_bytes: s.io_write_bytes,
                pids_current: s.pids_current,
                live: true,
            },
        };
        Ok(Response::new(resp))
    }
}
