//! The shard's side of access control (`acl.rs`) and of SIGHUP reloads (`security.rs`).
//!
//! A client's rules are resolved at CONNECT (its username and client id substituted) and kept
//! per session beside the session table, not in `Session`: a broker without an ACL keeps
//! nothing and pays one branch (`self.acl.is_some()`) per PUBLISH, SUBSCRIBE filter and
//! delivery. With one, a check is a hash lookup and a match over the client's few filters.
//!
//! Reload: the shard compares the generation once per loop turn; on a new one it takes the new
//! files and resolves every session's rules again, so connected clients and persistent
//! sessions meet the new rules from their next operation on (existing subscriptions stay, and
//! each delivery is checked against the new rules).

use crate::acl::ClientRules;

use super::Shard;

/// Each session's rules, by session index; filled only when there is an ACL.
pub(super) type AclClients = hashbrown::HashMap<u32, ClientAcl, foldhash::fast::RandomState>;

pub(super) struct ClientAcl {
    /// Kept to resolve the rules again on a reload.
    username: Option<Box<str>>,
    rules: ClientRules,
}

impl Shard {
    /// The rules of a connecting client, when there is an ACL.
    pub(super) fn resolve_acl(
        &self,
        username: Option<&str>,
        client_id: &str,
    ) -> Option<ClientRules> {
        self.acl
            .as_ref()
            .map(|acl| acl.resolve(username, client_id))
    }

    /// The session's rules from now on (a resumed session takes its new connection's).
    pub(super) fn keep_client_acl(
        &mut self,
        session: u32,
        username: Option<&str>,
        rules: ClientRules,
    ) {
        let client = ClientAcl {
            username: username.map(Into::into),
            rules,
        };
        self.acl_clients.insert(session, client);
    }

    /// The session is gone; its index may be reused.
    pub(super) fn forget_client_acl(&mut self, session: u32) {
        if self.acl.is_some() {
            self.acl_clients.remove(&session);
        }
    }

    /// May this session receive a message on `topic`? Called with an ACL only. A session
    /// without rules (none was resolved) may do nothing.
    pub(super) fn acl_may_read(&self, session: u32, topic: &str) -> bool {
        self.acl_clients
            .get(&session)
            .is_some_and(|client| client.rules.may_read(topic))
    }

    /// May this session publish on `topic`? Called with an ACL only.
    pub(super) fn acl_may_write(&self, session: u32, topic: &str) -> bool {
        self.acl_clients
            .get(&session)
            .is_some_and(|client| client.rules.may_write(topic))
    }

    /// May this session subscribe to `filter`? Called with an ACL only.
    pub(super) fn acl_may_subscribe(&self, session: u32, filter: &str) -> bool {
        self.acl_clients
            .get(&session)
            .is_some_and(|client| client.rules.may_subscribe(filter))
    }

    /// A reload happened (SIGHUP): take the new files and resolve every session's rules again.
    #[cold]
    pub(super) fn take_reloaded_security(&mut self) {
        self.security_generation = self.security.generation();
        let files = self.security.files();
        self.auth = files.auth;
        self.acl = files.acl;
        let Some(acl) = self.acl.clone() else {
            self.acl_clients.clear();
            return;
        };
        for (&session, client) in self.acl_clients.iter_mut() {
            let Some(s) = self.sessions.get(session) else {
                continue;
            };
            client.rules = acl.resolve(client.username.as_deref(), &s.client_id);
        }
    }
}
