//! The interned span tags: one small integer per distinct (span name, selected field values),
//! which a thread keeps as its current span (`thread_state`) and the table keeps with each
//! sampled stack. Bounded: past [`max_tags`] distinct tags, new ones share [`OVERFLOW`], so a
//! field with unbounded values (a request id) costs a fixed amount of memory and of stacks.
//!
//! Interning happens when a span is created or records a field, never on the allocation path;
//! the lock is held across a fork (see `fork`) so a child can still create spans and name them.

// Without feature `tracing` nothing interns: every thread stays outside any span.
#![cfg_attr(not(feature = "tracing"), allow(dead_code))]

use crate::fork::{GuardSlot, HeldAcrossFork, Hooks, Rank};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// No span: the tag of a thread outside every span, and of samples taken there.
pub(crate) const NO_SPAN: u32 = 0;

/// The tag every span gets once [`max_tags`] distinct tags exist.
pub(crate) const OVERFLOW: u32 = u32::MAX;

/// The span name of samples whose span came once the bound on distinct tags was reached.
pub const OVERFLOW_NAME: &str = "[heapwatch: span tags full]";

/// The label key of a sample's span name in every profile.
pub const SPAN_LABEL: &str = "span";

/// The default bound on distinct tags: far more than a service's routes times its tenants,
/// while a few hundred KiB at most.
pub const DEFAULT_MAX_TAGS: usize = 1024;

/// Field values longer than this many bytes are cut (at a character boundary) and end in `…`:
/// a tag is a label, not a log line.
pub const MAX_VALUE_BYTES: usize = 128;

static MAX_TAGS: AtomicUsize = AtomicUsize::new(DEFAULT_MAX_TAGS);

/// A span name and the values of its selected fields, in the order the fields were selected.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Tag {
    pub name: &'static str,
    pub fields: Vec<(&'static str, String)>,
}

struct Tags {
    ids: Option<HashMap<Tag, u32>>,
    /// Tag `id` is `list[id - 1]`.
    list: Vec<Tag>,
}

static TAGS: HeldAcrossFork<Mutex<Tags>> = HeldAcrossFork::new(
    Rank::SpanTags,
    &FORK_HOOKS,
    Mutex::new(Tags {
        ids: None,
        list: Vec::new(),
    }),
);

static FORK_HOOKS: Hooks = Hooks {
    take: |forking| {
        let tags = TAGS.for_fork(forking).lock();
        HELD_FOR_FORK.keep(forking, tags.unwrap_or_else(PoisonError::into_inner));
    },
    release: |forking| drop(HELD_FOR_FORK.take(forking)),
    in_child: None,
};

static HELD_FOR_FORK: GuardSlot<MutexGuard<'static, Tags>> = GuardSlot::new();

fn lock() -> MutexGuard<'static, Tags> {
    // Nothing under this lock panics but an allocation failure, after which the table is
    // still whole.
    TAGS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Sets the bound on distinct tags (at least 1). Tags already interned keep their ids.
pub(crate) fn set_max_tags(max: usize) {
    MAX_TAGS.store(max.max(1), Ordering::Relaxed);
}

/// The bound on distinct tags.
pub(crate) fn max_tags() -> usize {
    MAX_TAGS.load(Ordering::Relaxed)
}

/// The id of `tag`, interning it on first sight; [`OVERFLOW`] once the bound is reached.
pub(crate) fn intern(tag: &Tag) -> u32 {
    let mut tags = lock();
    let Tags { ids, list } = &mut *tags;
    let ids = ids.get_or_insert_with(HashMap::new);
    if let Some(&id) = ids.get(tag) {
        return id;
    }
    if list.len() >= max_tags() || list.len() >= (OVERFLOW - 1) as usize {
        return OVERFLOW;
    }
    list.push(tag.clone());
    let id = list.len() as u32;
    ids.insert(tag.clone(), id);
    id
}

/// The labels of tag `id`: `span` first, then each selected field that has a value. Empty for
/// [`NO_SPAN`] and for an id never handed out (a profile from before a fork, say).
pub(crate) fn labels(id: u32) -> Vec<(String, String)> {
    match id {
        NO_SPAN => Vec::new(),
        OVERFLOW => vec![(SPAN_LABEL.to_owned(), OVERFLOW_NAME.to_owned())],
        id => {
            let tags = lock();
            let Some(tag) = tags.list.get(id as usize - 1) else {
                return Vec::new();
            };
            let mut labels = Vec::with_capacity(1 + tag.fields.len());
            labels.push((SPAN_LABEL.to_owned(), tag.name.to_owned()));
            labels.extend(
                tag.fields
                    .iter()
                    .map(|(key, value)| ((*key).to_owned(), value.clone())),
            );
            labels
        }
    }
}

/// `value` cut to at most [`MAX_VALUE_BYTES`] at a character boundary, `…` marking a cut.
pub(crate) fn bounded_value(mut value: String) -> String {
    if value.len() > MAX_VALUE_BYTES {
        let mut end = MAX_VALUE_BYTES - '…'.len_utf8();
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        value.truncate(end);
        value.push('…');
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(name: &'static str, route: &str) -> Tag {
        Tag {
            name,
            fields: vec![("route", route.to_owned())],
        }
    }

    #[test]
    fn equal_tags_share_an_id_and_name_their_labels() {
        let a = intern(&tag("tags_test_request", "/a"));
        let b = intern(&tag("tags_test_request", "/b"));
        assert_ne!(a, b);
        assert_eq!(intern(&tag("tags_test_request", "/a")), a);
        assert_eq!(
            labels(a),
            vec![
                ("span".to_owned(), "tags_test_request".to_owned()),
                ("route".to_owned(), "/a".to_owned())
            ]
        );
        assert!(labels(NO_SPAN).is_empty());
        assert!(labels(OVERFLOW - 1).is_empty());
        assert_eq!(labels(OVERFLOW)[0].1, OVERFLOW_NAME);
    }

    #[test]
    fn values_are_cut_at_a_character_boundary() {
        let long = "é".repeat(200);
        let cut = bounded_value(long);
        assert!(cut.len() <= MAX_VALUE_BYTES);
        assert!(cut.ends_with('…'));
        assert_eq!(bounded_value("short".into()), "short");
    }
}
