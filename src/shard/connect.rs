//! CONNECT and DISCONNECT: a connection's session begins and ends here. Authentication, the
//! client id (assigned when empty), take-over, session resume or clean start, MQTT 5's Session
//! Expiry Interval and the CONNACK properties that tell a 5.0 client what the broker does, and
//! the client's DISCONNECT (its will kept by reason 0x04, its session expiry changed), and
//! AUTH (enhanced authentication through `auth::EnhancedAuthMethods`).

use bytes::Bytes;
use bytestring::ByteString;

use crate::auth::AuthStep;
use crate::protocol::{
    Auth, ConnAck, Connect, Disconnect, LastWill, Packet, Properties, ProtocolVersion, ReasonCode,
};
use crate::session::{ConnRef, Session};

use super::conn::ConnState;
use super::conn_v5::ConnV5;
use super::handle::unpinned_string;
use super::limits::LimitHit;
use super::problem::reason_properties;
use super::{CloseReason, Shard};

/// Response Information for a client that asks for it (Request Response Information 1): a
/// topic prefix of its own, `response/<client id>`, under which it may take replies (spec
/// 4.10). None for a client id that cannot be part of a topic name (a wildcard or U+0000 in
/// it): the server may always leave it out (3.2.2.3.15).
fn response_information(client_id: &str) -> Option<ByteString> {
    if client_id.contains(['+', '#', '\0']) {
        return None;
    }
    Some(ByteString::from(format!("response/{client_id}")))
}

/// How long a session outlives its connection, in seconds (`u32::MAX`: for ever; 0: it ends
/// with the connection), and whether the broker shortened what the client asked for.
struct SessionExpiry {
    secs: u32,
    capped: bool,
}

/// 3.1.1: clean session 0 keeps the session for `persistent_session_expiry_secs` (0 there:
/// for ever). MQTT 5: the client's Session Expiry Interval (absent: 0 [MQTT-3.1.2-11];
/// 0xFFFFFFFF: never), capped by `persistent_session_expiry_secs` when that is set (the
/// CONNACK then says so [MQTT-3.2.2-3]).
fn session_expiry(connect: &Connect, expiry_max_secs: u32) -> SessionExpiry {
    let max_secs = if expiry_max_secs == 0 {
        u32::MAX
    } else {
        expiry_max_secs
    };
    if !connect.protocol.is_v5() {
        let secs = if connect.clean_start { 0 } else { max_secs };
        return SessionExpiry {
            secs,
            capped: false,
        };
    }
    let asked_secs = connect.properties.session_expiry_interval.unwrap_or(0);
    SessionExpiry {
        secs: asked_secs.min(max_secs),
        capped: asked_secs > max_secs,
    }
}

impl Shard {
    /// The client leaves. MQTT 5: any reason but 0x00 keeps the will, and the Session Expiry
    /// Interval may change, but not from 0 [MQTT-3.14.2-2].
    pub(super) fn on_disconnect(&mut self, slot: u32, generation: u32, disconnect: &Disconnect) {
        let Some(conn) = self.conns.get_mut(slot, generation) else {
            return;
        };
        let session = conn.session;
        if let Some(expiry_secs) = disconnect.properties.session_expiry_interval {
            let Some(s) = self.sessions.get_mut(session) else {
                return;
            };
            if s.clean_session && expiry_secs != 0 {
                self.close(slot, generation, CloseReason::Protocol);
                return;
            }
            let max_secs = match self.config.limits.persistent_session_expiry_secs {
                0 => u32::MAX,
                max_secs => max_secs,
            };
            s.session_expiry_secs = expiry_secs.min(max_secs);
            let (persistent, version) = (!s.clean_session, s.version as u8);
            if persistent {
                match s.session_expiry_secs {
                    0 => self.log_session_end(session),
                    expiry_secs => self.log_session(session, version, expiry_secs),
                }
            }
            let Some(s) = self.sessions.get_mut(session) else {
                return;
            };
            if expiry_secs == 0 && !s.clean_session {
                // Ends with this connection now: no longer under sessions_max.
                s.clean_session = true;
                self.peers.release_session();
            }
        }
        if disconnect.code != ReasonCode::NORMAL_DISCONNECTION {
            // [MQTT-3.1.2-8] Only a normal disconnection (0x00) deletes the will: 0x04 asks
            // for it, and so does any error a client gives as its reason (0x80 and up).
            self.close(slot, generation, CloseReason::DisconnectWithWill);
            return;
        }
        // [MQTT-3.14.4-3] A normal DISCONNECT discards the will.
        if let Some(conn) = self.conns.get_mut(slot, generation) {
            if conn.take_will().is_some() && self.durable.is_some() {
                self.log_will_end(session);
            }
        }
        self.close(slot, generation, CloseReason::Disconnect);
    }

    /// CONNACK with a failure code, then close once it is sent.
    pub(super) fn refuse(
        &mut self,
        slot: u32,
        generation: u32,
        version: ProtocolVersion,
        code: ReasonCode,
    ) {
        if let Some(conn) = self.conns.get_mut(slot, generation) {
            conn.version = version;
        }
        // A CONNACK may carry its Reason String whatever the client asked [MQTT-3.1.2-29].
        let properties = if version.is_v5() {
            reason_properties(code)
        } else {
            Default::default()
        };
        let ack = ConnAck {
            session_present: false,
            code,
            properties,
        };
        self.write(slot, generation, &Packet::ConnAck(ack));
        self.stats.connections_refused += 1;
        self.log_refused(slot, version, code);
        self.close(slot, generation, CloseReason::Refused);
    }

    /// For a connection from a listener with `use_identity_as_username`: its client
    /// certificate's Common Name (`None` inside when it has none). `None` for the others.
    fn tls_identity(&self, slot: u32, generation: u32) -> Option<Option<String>> {
        if !self.tls_listeners {
            return None;
        }
        let listener = &self.listeners[self.conns.listener(slot)];
        if !listener.config.use_identity_as_username {
            return None;
        }
        let tls = self.tls.get(&(slot, generation));
        Some(tls.and_then(|tls| tls.identity.as_deref().map(String::from)))
    }

    fn authenticate(&self, slot: u32, connect: &Connect) -> ReasonCode {
        // The listener's own `allow_anonymous` (mosquitto's per-listener setting) first.
        let allow_anonymous = self.listeners[self.conns.listener(slot)]
            .config
            .allow_anonymous
            .unwrap_or(self.config.allow_anonymous);
        match (&connect.username, &self.auth) {
            (Some(username), Some(auth)) => {
                let password = connect.password.as_deref().unwrap_or(&[]);
                if auth.check(username, password) {
                    ReasonCode::Success
                } else {
                    ReasonCode::BadUserNameOrPassword
                }
            }
            (Some(_), None) | (None, _) => {
                if allow_anonymous {
                    ReasonCode::Success
                } else {
                    ReasonCode::NotAuthorized
                }
            }
        }
    }

    /// A CONNECT: the client connects (a line says so), or is refused (`refuse` says why).
    pub(super) fn on_connect(&mut self, slot: u32, generation: u32, connect: Box<Connect>) {
        self.connecting.begin(&connect.client_id);
        self.connect_client(slot, generation, connect);
        self.connecting.end();
    }

    fn connect_client(&mut self, slot: u32, generation: u32, connect: Box<Connect>) {
        let version = connect.protocol;
        let v5 = version.is_v5();
        // Copied out of the receive arena: a session can live for days, and a slice would pin
        // the whole arena block it came in.
        let mut client_id: Box<str> = (*connect.client_id).into();
        crate::broker::panic_if_test_asks(&client_id);
        let assigned = client_id.is_empty();
        if assigned {
            // [MQTT-3.1.3-8] Under 3.1.1 a zero-length client id needs clean session 1; MQTT
            // 3.1 wants 1 to 23 characters (its section 3.1, "Client Identifier").
            if (!connect.clean_start && !v5) || version == ProtocolVersion::V3_1 {
                self.refuse(
                    slot,
                    generation,
                    version,
                    ReasonCode::ClientIdentifierNotValid,
                );
                return;
            }
            // [MQTT-3.1.3-6] Assign one, homed on this shard so the client stays here (MQTT 5
            // returns it in CONNACK [MQTT-3.1.3-7]).
            loop {
                self.next_client_number += 1;
                client_id = format!("ringmq-{}-{}", self.index, self.next_client_number).into();
                if crate::mesh::home_shard(client_id.as_bytes(), self.shard_count) == self.index {
                    break;
                }
            }
        }
        let qos_max = self.config.limits.qos_max;
        if v5 && connect.will.as_ref().is_some_and(|w| w.qos as u8 > qos_max) {
            // [MQTT-3.2.2-12] A will above our Maximum QoS.
            self.refuse(slot, generation, version, ReasonCode::QoSNotSupported);
            return;
        }
        // Enhanced authentication (MQTT 5 only: the decoder never sets a 3.1.x property).
        let mut enhanced: Option<(Box<str>, Option<Bytes>)> = None;
        if let Some(method) = connect.properties.authentication_method.as_deref() {
            let data = connect.properties.authentication_data.as_deref();
            match self.enhanced_auth.begin(method, &client_id, data) {
                AuthStep::Success(data) => enhanced = Some((method.into(), data)),
                // [MQTT-4.12.0-1] Unknown methods (all of them today) get 0x8C.
                AuthStep::Fail(code) => {
                    self.refuse(slot, generation, version, code);
                    return;
                }
                // A multi-step exchange needs the connection to wait between CONNECT and
                // CONNACK, a state it does not have yet: it comes with the first such method
                // (SCRAM, the security issue).
                AuthStep::Continue(_) => {
                    self.refuse(
                        slot,
                        generation,
                        version,
                        ReasonCode::BadAuthenticationMethod,
                    );
                    return;
                }
            }
        }
        let mut connect = connect;
        let code = if enhanced.is_some() {
            ReasonCode::Success
        } else if let Some(identity) = self.tls_identity(slot, generation) {
            // `use_identity_as_username`: the verified certificate's Common Name is the
            // username, and no password is checked (as mosquitto does).
            match identity {
                Some(name) => {
                    connect.username = Some(ByteString::from(name));
                    ReasonCode::Success
                }
                None => ReasonCode::NotAuthorized,
            }
        } else {
            self.authenticate(slot, &connect)
        };
        if code != ReasonCode::Success {
            self.refuse(slot, generation, version, code);
            return;
        }
        let username = connect.username.as_deref();
        let acl_rules = self.resolve_acl(username, &client_id);
        if let (Some(rules), Some(will)) = (&acl_rules, &connect.will) {
            // A will the client may not publish refuses the CONNECT (3.1.1: return code 5;
            // 5.0: 0x87, an authorization check failing [MQTT-3.1.4-3]). mosquitto 2.0
            // accepts it and drops the will when the client goes: a failure that shows only
            // when the will matters.
            if !rules.may_write(&will.topic) {
                self.refuse(slot, generation, version, ReasonCode::NotAuthorized);
                return;
            }
        }
        let expiry = session_expiry(&connect, self.config.limits.persistent_session_expiry_secs);
        // Whether the session outlives the connection: 3.1.1 clean session 0, or MQTT 5 with
        // a Session Expiry Interval above 0 [MQTT-3.1.2-23].
        let persistent = expiry.secs > 0;
        // sessions_max bounds persistent sessions, which outlive connections; resuming one
        // creates nothing. (A clean session lives only as long as its connection, which
        // connections_max bounds.)
        let creates_persistent = persistent
            && self
                .sessions
                .find(&client_id)
                .and_then(|index| self.sessions.get(index))
                .is_none_or(|s| s.clean_session);
        if creates_persistent && !self.peers.admit_session(self.config.limits.sessions_max) {
            self.limit_hit(LimitHit::Sessions);
            let code = if v5 {
                ReasonCode::QuotaExceeded
            } else {
                ReasonCode::ServerUnavailable
            };
            self.refuse(slot, generation, version, code);
            return;
        }
        // connections_max holds for the whole broker: the count is shared by the shards.
        if !self.peers.admit(self.config.limits.connections_max) {
            if creates_persistent {
                self.peers.release_session();
            }
            // 3.1.1 encodes both as return code 3.
            self.refuse(slot, generation, version, ReasonCode::ServerBusy);
            return;
        }
        // [MQTT-3.1.4-2] Take-over: the connection holding this client id is closed (its will
        // published; an MQTT 5 client first gets DISCONNECT 0x8E). Detaching destroys its
        // session if that was clean.
        if let Some((old, continues)) = self.sessions.find(&client_id).and_then(|s| {
            let s = self.sessions.get(s)?;
            Some((s.conn?, !s.clean_session && !connect.clean_start))
        }) {
            if let Some(conn) = self.conns.get_mut(old.slot, old.generation) {
                // [MQTT-3.1.3-9] An MQTT 5 will goes after the connection closes and its delay
                // passes or its session ends; a new connection to a session that continues
                // came first, so it does not go (mosquitto agrees). 3.1.1 says only that it
                // goes unless a DISCONNECT deleted it [MQTT-3.1.2-8].
                if continues && conn.version.is_v5() {
                    conn.take_will();
                }
            }
            self.close(old.slot, old.generation, CloseReason::TakenOver);
        }
        if let Some(index) = self.sessions.find(&client_id) {
            // [MQTT-3.1.2-8] A new connection for the client id before its will's delay ran
            // out: no will, with Clean Start 1 too (though that ends the session, which
            // under 3.1.3.2.2 would send it; mosquitto's 07-will-delay-recover agrees).
            self.cancel_delayed_will(index);
        }
        if let Some(index) = self.sessions.find(&client_id) {
            if connect.clean_start || !persistent {
                // The persistent session it had ends here (a no-op for a clean one).
                self.log_session_end(index);
            }
        }
        let (session, session_present) = match self.sessions.find(&client_id) {
            Some(index) if !connect.clean_start => {
                // [MQTT-3.2.2-3] Resumed: session present. The new connection sets how long
                // the session outlives it.
                if let Some(s) = self.sessions.get_mut(index) {
                    if !s.clean_session && !persistent {
                        self.peers.release_session();
                    }
                    s.version = version;
                    s.clean_session = !persistent;
                    s.session_expiry_secs = expiry.secs;
                }
                (index, true)
            }
            Some(index) => {
                // [MQTT-3.1.2-6] [MQTT-3.1.2-4] Clean session / clean start 1 discards the
                // previous session.
                self.clear_subscriptions(index);
                if let Some(s) = self.sessions.get_mut(index) {
                    if !s.clean_session && !persistent {
                        self.peers.release_session();
                    }
                    s.reset(!persistent, version);
                    s.session_expiry_secs = expiry.secs;
                }
                (index, false)
            }
            None => {
                let mut session = Session::new(client_id.clone(), !persistent, version);
                session.session_expiry_secs = expiry.secs;
                (self.sessions.insert(session), false)
            }
        };
        if let Some(rules) = acl_rules {
            self.keep_client_acl(session, username, rules);
        }
        if persistent {
            self.log_session_connected(session, version as u8, expiry.secs, username);
        }
        let Some(conn) = self.conns.get_mut(slot, generation) else {
            self.peers.release();
            self.detach_session(session);
            return;
        };
        conn.state = ConnState::Connected;
        conn.session = session;
        conn.version = version;
        conn.keepalive_secs = super::timer::effective_keepalive_secs(
            connect.keepalive_secs,
            self.config.limits.keepalive_max_secs,
        );
        let keepalive_secs = conn.keepalive_secs;
        // Aliases are the connection's, not the session's: a new one starts with none
        // [MQTT-3.3.2-7]; with them, the client's Maximum Packet Size, which the CONNACK
        // below already obeys.
        conn.v5 = if v5 {
            ConnV5::for_connect(&connect.properties, self.config.limits.topic_alias_max)
        } else {
            None
        };
        conn.set_will(connect.will.as_ref().map(|will| {
            Box::new(LastWill {
                topic: unpinned_string(&will.topic),
                payload: Bytes::copy_from_slice(&will.payload),
                qos: will.qos,
                retain: will.retain,
                properties: will.properties.clone(),
            })
        }));
        if let Some(s) = self.sessions.get_mut(session) {
            s.conn = Some(ConnRef { slot, generation });
            // [MQTT-3.1.2-21] Absent: 65,535. It bounds our QoS 1/2 sends (`window_open`).
            s.receive_maximum = connect.properties.receive_maximum.unwrap_or(u16::MAX);
        }
        if persistent && self.durable.is_some() {
            self.log_will(session, slot, generation);
        }
        self.stats.connections += 1;
        self.stats.connections_high_water = self
            .stats
            .connections_high_water
            .max(self.stats.connections);
        let mut properties = if v5 {
            self.connack_properties(
                &connect,
                &client_id,
                assigned,
                keepalive_secs,
                expiry.capped.then_some(expiry.secs),
            )
        } else {
            Default::default()
        };
        if let Some((method, data)) = enhanced {
            // The CONNACK names the method the client authenticated with (3.2.2.3.17).
            properties.authentication_method = Some(ByteString::from(&*method));
            properties.authentication_data = data;
            if let Some(conn) = self.conns.get_mut(slot, generation) {
                conn.v5.get_or_insert_with(Box::default).auth_method = Some(method);
            }
        }
        let mut ack = Packet::ConnAck(ConnAck {
            session_present,
            code: ReasonCode::Success,
            properties: properties.into(),
        });
        if let Some(size_max) = connect.properties.maximum_packet_size {
            if !fit_connack(&mut ack, version, size_max as usize) {
                // [MQTT-3.1.2-24] Not even a CONNACK fits what the client takes: it cannot be
                // told, only closed.
                self.close_with(slot, generation, CloseReason::Protocol, None);
                return;
            }
        }
        self.write(slot, generation, &ack);
        self.log_connect(
            slot,
            generation,
            &client_id,
            connect.username.as_deref(),
            connect.clean_start,
            session_present,
        );
        if session_present {
            self.resend_inflight(session, slot, generation);
            self.pump(session);
        }
    }

    /// AUTH from a connected client: re-authentication with the method it connected with
    /// [MQTT-4.12.1-1], answered by that method. A client that did not authenticate with a
    /// method at CONNECT may send none (spec 4.12), nor one naming another method: both are
    /// protocol errors (DISCONNECT 0x82).
    pub(super) fn on_auth(&mut self, slot: u32, generation: u32, auth: &Auth) {
        let method: Option<Box<str>> = self
            .conns
            .get(slot, generation)
            .and_then(|c| c.v5.as_ref()?.auth_method.clone());
        let Some(method) = method else {
            self.close(slot, generation, CloseReason::Protocol);
            return;
        };
        if auth.properties.authentication_method.as_deref() != Some(&*method) {
            self.close(slot, generation, CloseReason::Protocol);
            return;
        }
        let client_id: Box<str> = self
            .conns
            .get(slot, generation)
            .and_then(|c| self.sessions.get(c.session))
            .map(|s| s.client_id.clone())
            .unwrap_or_default();
        let data = auth.properties.authentication_data.as_deref();
        let (code, data) = match self.enhanced_auth.begin(&method, &client_id, data) {
            AuthStep::Success(data) => (ReasonCode::Success, data),
            AuthStep::Continue(data) => (ReasonCode::ContinueAuthentication, Some(data)),
            AuthStep::Fail(code) => {
                self.close_with(slot, generation, CloseReason::Protocol, Some(code));
                return;
            }
        };
        let mut answer = Auth {
            code,
            properties: Default::default(),
        };
        answer.properties.authentication_method = Some(ByteString::from(&*method));
        answer.properties.authentication_data = data;
        self.write(slot, generation, &Packet::Auth(answer));
    }

    /// What an MQTT 5 CONNACK tells the client about the broker (spec 3.2.2.3): the limits it
    /// holds the client to, and the features it lacks.
    fn connack_properties(
        &self,
        connect: &Connect,
        client_id: &str,
        assigned: bool,
        keepalive_secs: u16,
        session_expiry_secs: Option<u32>,
    ) -> Properties {
        let limits = &self.config.limits;
        let assigned_client_id = assigned.then_some(client_id);
        Properties {
            // Asked for with Request Response Information 1 (spec 3.1.2.11.7).
            response_information: (connect.properties.request_response_information == Some(1))
                .then(|| response_information(client_id))
                .flatten(),
            session_expiry_interval: session_expiry_secs,
            // Our bound on the client's unacknowledged QoS 1/2 PUBLISHes [MQTT-3.3.4-9].
            receive_maximum: Some(limits.incoming_inflight_max.max(1)),
            maximum_qos: (limits.qos_max < 2).then_some(limits.qos_max),
            maximum_packet_size: Some(limits.packet_size_max),
            assigned_client_identifier: assigned_client_id.map(ByteString::from),
            // The aliases the client may use [MQTT-3.2.2-17]; absent: none (3.2.2.3.8).
            topic_alias_maximum: (limits.topic_alias_max > 0).then_some(limits.topic_alias_max),
            // Retained messages, wildcards, subscription identifiers and shared subscriptions
            // are all available, which their properties' absence says (3.2.2.3.5, 3.2.2.3.11-13):
            // four properties fewer keep the CONNACK within a small Maximum Packet Size.
            // [MQTT-3.2.2-21] The client must use the server's keep alive when it is sent.
            server_keep_alive: (keepalive_secs != connect.keepalive_secs).then_some(keepalive_secs),
            ..Properties::default()
        }
    }
}

/// Shrinks a CONNACK over the client's Maximum Packet Size by what the client can do without,
/// in turn: Reason String and User Properties [MQTT-3.2.2-19] [MQTT-3.2.2-20], Response
/// Information, then the Topic Alias Maximum (the client then takes it to be 0 and sends no
/// aliases). False when it is still too large: the limits it keeps tell the client how to
/// behave, so the connection cannot go on without them.
fn fit_connack(ack: &mut Packet, version: ProtocolVersion, size_max: usize) -> bool {
    let trims: [fn(&mut Properties); 3] = [
        |p| {
            p.reason_string = None;
            p.user_properties = Vec::new();
        },
        |p| p.response_information = None,
        |p| p.topic_alias_maximum = None,
    ];
    for trim in trims {
        if crate::protocol::encoded_len(ack, version) <= size_max {
            return true;
        }
        if let Some(properties) = ack.properties_mut() {
            trim(properties);
        }
    }
    crate::protocol::encoded_len(ack, version) <= size_max
}
