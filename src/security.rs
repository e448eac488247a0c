//! The files SIGHUP reloads: the password file and the ACL file. Loaded off the shards (the
//! main thread parses them), then handed over by a generation number each shard compares once
//! per loop turn: one atomic load per turn, nothing per message, and the lock behind it is
//! taken only by a shard that sees a new generation. A reload that fails changes nothing.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::acl::{self, AclFile};
use crate::auth::{self, PasswordFile};
use crate::config::Config;

/// One generation of the files, as a shard holds it.
#[derive(Clone, Debug, Default)]
pub struct SecurityFiles {
    pub auth: Option<Arc<PasswordFile>>,
    pub acl: Option<Arc<AclFile>>,
}

/// The paths from the config and the files last loaded from them.
#[derive(Debug, Default)]
pub struct Security {
    password_file: Option<PathBuf>,
    acl_file: Option<PathBuf>,
    generation: AtomicU64,
    current: Mutex<SecurityFiles>,
}

impl Security {
    /// Loads the files `config` names; an error names the file and the line.
    pub fn load(config: &Config) -> Result<Security, String> {
        let security = Security {
            password_file: config.password_file.clone(),
            acl_file: config.acl_file.clone(),
            ..Security::default()
        };
        let files = security.read()?;
        *security.current.lock().unwrap_or_else(|e| e.into_inner()) = files;
        Ok(security)
    }

    fn read(&self) -> Result<SecurityFiles, String> {
        let auth = match &self.password_file {
            Some(path) => Some(Arc::new(auth::load(path)?)),
            None => None,
        };
        let acl = match &self.acl_file {
            Some(path) => Some(Arc::new(acl::load(path)?)),
            None => None,
        };
        Ok(SecurityFiles { auth, acl })
    }

    /// Reads both files again; only when both parse do they replace the old ones (the shards
    /// take them at their next turn: wake them). Returns what was loaded, for the log.
    pub fn reload(&self) -> Result<String, String> {
        let files = self.read()?;
        let summary = format!(
            "password file: {}; acl file: {}",
            files
                .auth
                .as_ref()
                .map_or("none".to_string(), |f| format!("{} users", f.len())),
            files.acl.as_ref().map_or("none".to_string(), |f| format!(
                "{} rules, {} users",
                f.rules(),
                f.users()
            )),
        );
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = files;
        self.generation.fetch_add(1, Ordering::Release);
        Ok(summary)
    }

    /// Bumped by each successful reload.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The files as of the last load.
    pub fn files(&self) -> SecurityFiles {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
