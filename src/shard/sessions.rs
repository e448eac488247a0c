//! Sessions by index (the subscriber id in the tries), with a free list and a client id
//! index: the shard's table of the clients it is home to.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use hashbrown::HashTable;

use crate::session::Session;

use super::limits;

/// Sessions by index (the subscriber id in the tries), with a free list and a client id
/// index. The index stores only session numbers and hashes the ids the sessions hold, so a
/// client id is kept once, not again as a map key. Detached persistent sessions also wait in
/// `expiry` (see `limits.rs`).
#[derive(Default)]
pub(super) struct Sessions {
    pub(super) slots: Vec<Option<Session>>,
    pub(super) free: Vec<u32>,
    pub(super) by_client_id: HashTable<u32>,
    pub(super) hasher: RandomState,
    pub(super) expiry: limits::ExpiryQueue,
}

impl Sessions {
    /// Sessions held.
    pub(super) fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (u32, &Session)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(index, s)| Some((index as u32, s.as_ref()?)))
    }

    pub(super) fn get_mut(&mut self, index: u32) -> Option<&mut Session> {
        self.slots.get_mut(index as usize)?.as_mut()
    }

    pub(super) fn get(&self, index: u32) -> Option<&Session> {
        self.slots.get(index as usize)?.as_ref()
    }

    pub(super) fn client_id_of(slots: &[Option<Session>], index: u32) -> &str {
        slots[index as usize].as_ref().map_or("", |s| &s.client_id)
    }

    pub(super) fn find(&self, client_id: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(client_id);
        let slots = &self.slots;
        self.by_client_id
            .find(hash, |&index| Self::client_id_of(slots, index) == client_id)
            .copied()
    }

    pub(super) fn insert(&mut self, session: Session) -> u32 {
        let hash = self.hasher.hash_one(&*session.client_id);
        let index = match self.free.pop() {
            Some(index) => {
                self.slots[index as usize] = Some(session);
                index
            }
            None => {
                self.slots.push(Some(session));
                (self.slots.len() - 1) as u32
            }
        };
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.by_client_id.insert_unique(hash, index, |&other| {
            hasher.hash_one(Self::client_id_of(slots, other))
        });
        index
    }

    pub(super) fn remove(&mut self, index: u32) -> Option<Session> {
        let session = self.slots.get_mut(index as usize)?.take()?;
        let hash = self.hasher.hash_one(&*session.client_id);
        if let Ok(entry) = self.by_client_id.find_entry(hash, |&other| other == index) {
            entry.remove();
        }
        self.free.push(index);
        Some(session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ProtocolVersion;

    fn session(client_id: &str) -> Session {
        Session::new(client_id.into(), false, ProtocolVersion::V3_1_1)
    }

    #[test]
    fn sessions_are_found_by_client_id_and_indexes_are_reused() {
        let mut sessions = Sessions::default();
        let ids: Vec<u32> = (0..100)
            .map(|n| sessions.insert(session(&format!("client-{n}"))))
            .collect();
        for (n, &index) in ids.iter().enumerate() {
            assert_eq!(sessions.find(&format!("client-{n}")), Some(index));
        }
        assert_eq!(sessions.find("client-100"), None);
        let removed = sessions.remove(ids[42]).expect("present");
        assert_eq!(&*removed.client_id, "client-42");
        assert_eq!(sessions.find("client-42"), None);
        assert!(sessions.remove(ids[42]).is_none(), "removed twice");
        let again = sessions.insert(session("newcomer"));
        assert_eq!(again, ids[42], "the freed index is reused");
        assert_eq!(sessions.find("newcomer"), Some(again));
        assert_eq!(sessions.find("client-41"), Some(ids[41]));
        assert_eq!(sessions.find("client-43"), Some(ids[43]));
    }
}
