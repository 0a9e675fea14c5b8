//! Who is calling and what they may do: identity = client certificate CN, role = its OU.
//!
//! | role   | StartJob | Stop | Get / Stream / Watch / Stats | ListJobs  |
//! |--------|----------|------|------------------------------|-----------|
//! | admin  | yes      | any  | any                          | all jobs  |
//! | user   | yes      | own  | own                          | own jobs  |
//! | viewer | no       | no   | any                          | all jobs  |
//!
//! A missing or unknown role is denied everything. A job that the caller may not see is reported
//! as NOT_FOUND (ids are not an oracle). Every decision is logged.

use std::fmt;

use tonic::Status;
use x509_parser::prelude::{FromDer, X509Certificate};

/// A caller's role, from the certificate's OU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Admin,
    /// Starts jobs and manages its own.
    User,
    /// Reads everything, changes nothing.
    Viewer,
}

impl Role {
    /// Parses an OU value; unknown roles are `None`.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "user" => Some(Role::User),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }

    /// The OU spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
            Role::Viewer => "viewer",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The certificate's CN.
    pub name: String,
    /// The certificate's OU as written (may be empty or unknown).
    pub ou: String,
    /// The parsed role, `None` when missing or unknown.
    pub role: Option<Role>,
}

/// What the caller wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// StartJob.
    Start,
    /// StopJob.
    Stop,
    /// GetJob, StreamOutput, WatchJob, GetStats.
    Read,
    /// ListJobs.
    List,
}

/// The outcome of an authorization check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed.
    Allow,
    /// Allowed, restricted to jobs owned by this name (ListJobs for users).
    AllowOwn(String),
    /// Denied: the request is refused with PERMISSION_DENIED.
    Deny(&'static str),
    /// Denied without revealing that the job exists: NOT_FOUND.
    Hide,
}

/// Extracts the caller from the peer certificate chain of a request.
pub fn caller_from_certs(
    certs: Option<&[tonic::transport::CertificateDer<'static>]>,
) -> Result<Caller, Status> {
    let leaf = certs
        .and_then(|c| c.first())
        .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
    caller_from_der(leaf.as_ref())
}

/// Extracts CN and OU from a DER certificate.
pub fn caller_from_der(der: &[u8]) -> Result<Caller, Status> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| Status::unauthenticated(format!("unparsable client certificate: {e}")))?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_string();
    if name.is_empty() {
        return Err(Status::unauthenticated(
            "client certificate has no common name",
        ));
    }
    let ou = subject
        .iter_organizational_unit()
        .next()
        .and_then(|ou| ou.as_str().ok())
        .unwrap_or_default()
        .to_string();
    let role = Role::parse(&ou);
    Ok(Caller { name, ou, role })
}

/// Decides whether `caller` may do `action` on a job owned by `owner` (`None` for Start/List).
pub fn decide(caller: &Caller, action: Action, owner: Option<&str>) -> Decision {
    let Some(role) = caller.role else {
        return Decision::Deny(
            "the certificate has no known role (OU must be admin, user or viewer)",
        );
    };
    match (role, action) {
        (Role::Admin, Action::List) => Decision::Allow,
        (Role::Admin, _) => Decision::Allow,
        (Role::User, Action::Start) => Decision::Allow,
        (Role::User, Action::List) => Decision::AllowOwn(caller.name.clone()),
        (Role::User, Action::Stop | Action::Read) => match owner {
            Some(o) if o == caller.name => Decision::Allow,
            _ => Decision::Hide,
        },
        (Role::Viewer, Action::Start) => Decision::Deny("the viewer role cannot start jobs"),
        (Role::Viewer, Action::Stop) => Decision::Deny("the viewer role cannot stop jobs"),
        (Role::Viewer, Action::Read | Action::List) => Decision::Allow,
    }
}

/// [`decide`], logged, as a `Result` for the service: `Ok(Some(owner))` restricts a listing.
pub fn authorize(
    caller: &Caller,
    method: &str,
    action: Action,
    job_id: Option<&str>,
    owner: Option<&str>,
) -> Result<Option<String>, Status> {
    let decision = decide(caller, action, owner);
    let job = job_id.unwrap_or("-");
    match &decision {
        Decision::Allow | Decision::AllowOwn(_) => tracing::info!(
            identity = %caller.name, role = %caller.ou, method, job_id = job, decision = "allow",
            "authorization"
        ),
        Decision::Deny(why) => tracing::warn!(
            identity = %caller.name, role = %caller.ou, method, job_id = job, decision = "deny",
            reason = why, "authorization"
        ),
        Decision::Hide => tracing::warn!(
            identity = %caller.name, role = %caller.ou, method, job_id = job, decision = "deny",
            reason = "not the owner: answered not found", "authorization"
        ),
    }
    match decision {
        Decision::Allow => Ok(None),
        Decision::AllowOwn(o) => Ok(Some(o)),
        Decision::Deny(why) => Err(Status::permission_denied(why)),
        Decision::Hide => Err(not_found(job)),
    }
}

/// The NOT_FOUND status for a job id.
pub fn not_found(job_id: &str) -> Status {
    Status::not_found(format!("job {job_id} not found"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(name: &str, ou: &str) -> Caller {
        Caller {
            name: name.into(),
            ou: ou.into(),
            role: Role::parse(ou),
        }
    }

    #[test]
    fn matrix() {
        let admin = caller("root", "admin");
        let alice = caller("alice", "user");
        let vera = caller("vera", "viewer");
        let nobody = caller("eve", "");
        let odd = caller("mallory", "superuser");
        use Action::*;
        assert_eq!(decide(&admin, Start, None), Decision::Allow);
        assert_eq!(decide(&admin, Stop, Some("alice")), Decision::Allow);
        assert_eq!(decide(&admin, List, None), Decision::Allow);
        assert_eq!(decide(&alice, Start, None), Decision::Allow);
        assert_eq!(decide(&alice, Read, Some("alice")), Decision::Allow);
        assert_eq!(decide(&alice, Stop, Some("bob")), Decision::Hide);
        assert_eq!(decide(&alice, Read, Some("bob")), Decision::Hide);
        assert_eq!(
            decide(&alice, List, None),
            Decision::AllowOwn("alice".into())
        );
        assert!(matches!(decide(&vera, Start, None), Decision::Deny(_)));
        assert!(matches!(
            decide(&vera, Stop, Some("alice")),
            Decision::Deny(_)
        ));
        assert_eq!(decide(&vera, Read, Some("alice")), Decision::Allow);
        assert_eq!(decide(&vera, List, None), Decision::Allow);
        for c in [&nobody, &odd] {
            for a in [Start, Stop, Read, List] {
                assert!(
                    matches!(decide(c, a, Some("eve")), Decision::Deny(_)),
                    "{c:?} {a:?}"
                );
            }
        }
    }
}
