//! The `tracing_subscriber` layer that keeps each thread's current span as a tag: interned
//! when a span is created (or records a selected field), set on the thread when the span is
//! entered, and put back to the enclosing span's when it is left. A tokio task instrumented
//! with a span is entered at every poll on whichever worker polls it, so its allocations carry
//! its span wherever they run.

use super::tags::{self, Tag};
use crate::thread_state;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// A [`Layer`] that tags every sampled allocation with the span it was made in: the span's name
/// and the values of the fields you select, as pprof labels (`span=…`, `route=…`), in the
/// report, the dumps, the flamegraphs rooted by span and the per-span metrics.
///
/// A span without a selected field takes it from the nearest enclosing span that has it, so
/// a `db_query` span inside `request{route="/export"}` carries `route=/export` as well.
/// Distinct tags are bounded ([`max_tags`](Self::max_tags)); past the bound, new ones share
/// one overflow tag, so select fields with few values (routes, tenants), not request ids.
///
/// Costs nothing on allocations that are not sampled: a sampled one reads one thread-local.
/// Entering and leaving a span each set that thread-local (measured cost: the guide's
/// performance page, `docs/performance.md`).
///
/// ```
/// use tracing_subscriber::prelude::*;
///
/// tracing_subscriber::registry()
///     .with(heapwatch::SpanLayer::new().with_fields(["route", "tenant"]))
///     .init();
///
/// let span = tracing::info_span!("request", route = "/export", tenant = "acme");
/// let _entered = span.enter();
/// let kept: Vec<u8> = vec![0; 1 << 20]; // sampled under span=request, route=/export, tenant=acme
/// # drop(kept);
/// ```
#[derive(Clone, Debug, Default)]
pub struct SpanLayer {
    fields: Vec<&'static str>,
}

impl SpanLayer {
    /// A layer that tags allocations with their span's name only.
    pub fn new() -> Self {
        SpanLayer::default()
    }

    /// Also tags them with the values of these fields (as recorded on the span or an enclosing
    /// one), each as a label of its own. A field named `span` is ignored: that label is the
    /// span's name.
    pub fn with_fields(mut self, fields: impl IntoIterator<Item = &'static str>) -> Self {
        for field in fields {
            if field != tags::SPAN_LABEL && !self.fields.contains(&field) {
                self.fields.push(field);
            }
        }
        self
    }

    /// Bounds the distinct tags (span name and field values) of the whole process to `max`
    /// (default [`DEFAULT_MAX_TAGS`](crate::spans::DEFAULT_MAX_TAGS), at least 1); spans past
    /// it are tagged [`OVERFLOW_NAME`](crate::spans::OVERFLOW_NAME). Takes effect for tags
    /// interned from now on.
    pub fn max_tags(self, max: usize) -> Self {
        tags::set_max_tags(max);
        self
    }

    /// The tag of a span named `name` whose own selected values are `own`, inheriting from
    /// `parent` what it does not record itself.
    fn tag_of(&self, name: &'static str, own: &Values, parent: Option<&Tagged>) -> Tagged {
        if own.values.iter().all(Option::is_none) {
            // Nothing of its own (an inner span: `db_query`, `parse`): the parent's fields,
            // shared, and a tag found by name and parent tag, with no string compared.
            let fields = parent.map_or_else(|| Fields::from([]), |p| Arc::clone(&p.fields));
            let tag = inherited_tag(name, parent.map_or(tags::NO_SPAN, |p| p.tag), &fields);
            return Tagged { tag, fields };
        }
        let fields: Vec<(&'static str, String)> = self
            .fields
            .iter()
            .enumerate()
            .filter_map(|(index, &field)| {
                let value = own.values[index].clone().or_else(|| {
                    parent.and_then(|parent| {
                        parent
                            .fields
                            .iter()
                            .find(|(key, _)| *key == field)
                            .map(|(_, value)| value.clone())
                    })
                })?;
                Some((field, value))
            })
            .collect();
        let tag = Tag { name, fields };
        Tagged {
            tag: intern_cached(&tag),
            fields: Fields::from(tag.fields),
        }
    }
}

/// A span's selected fields and their values, shared with the spans inside it that record none.
type Fields = Arc<[(&'static str, String)]>;

/// The tag of a span named `name` that records no selected field, inside a span tagged
/// `parent_tag` whose fields are `fields`: found by the name's address and the parent's tag.
fn inherited_tag(name: &'static str, parent_tag: u32, fields: &Fields) -> u32 {
    // Under the overflow tag the parent's fields are not known from its tag: no shortcut.
    let key = (name.as_ptr() as usize, name.len(), parent_tag);
    let cached = (parent_tag != tags::OVERFLOW)
        .then(|| {
            INHERITED
                .try_with(|cache| cache.borrow().get(&key).copied())
                .ok()
                .flatten()
        })
        .flatten();
    if let Some(id) = cached {
        return id;
    }
    let id = intern_cached(&Tag {
        name,
        fields: fields.to_vec(),
    });
    if id != tags::OVERFLOW && parent_tag != tags::OVERFLOW {
        let _ = INHERITED.try_with(|cache| {
            let mut cache = cache.borrow_mut();
            if cache.len() >= CACHED_TAGS {
                cache.clear();
            }
            cache.insert(key, id);
        });
    }
    id
}

/// Tags this thread interned lately: a span like one seen before (the common case: a route
/// served again) is tagged without the process-wide lock. Cleared when full.
const CACHED_TAGS: usize = 256;

thread_local! {
    static CACHE: RefCell<HashMap<Tag, u32>> = RefCell::new(HashMap::new());
    /// [`inherited_tag`]'s: by span name (its address and length) and parent tag.
    static INHERITED: RefCell<HashMap<(usize, usize, u32), u32>> = RefCell::new(HashMap::new());
    /// The spans this thread is in, innermost last, each with its tag: leaving one gives the
    /// thread the tag of the span now innermost, without looking it up in the registry.
    static ENTERED: RefCell<Vec<(u64, u32)>> = const { RefCell::new(Vec::new()) };
}

/// The id of `tag`, from this thread's cache or interned.
fn intern_cached(tag: &Tag) -> u32 {
    let cached = CACHE
        .try_with(|cache| cache.borrow().get(tag).copied())
        .ok()
        .flatten();
    if let Some(id) = cached {
        return id;
    }
    let id = tags::intern(tag);
    // The overflow tag is not cached: a later span may find room once the bound is raised.
    if id != tags::OVERFLOW {
        let _ = CACHE.try_with(|cache| {
            let mut cache = cache.borrow_mut();
            if cache.len() >= CACHED_TAGS {
                cache.clear();
            }
            cache.insert(tag.clone(), id);
        });
    }
    id
}

/// What the layer keeps in a span's extensions.
struct Tagged {
    tag: u32,
    /// The selected fields' values it carries, its own and inherited.
    fields: Fields,
}

/// The selected fields' values a span records, in the layer's order.
struct Values<'a> {
    selected: &'a [&'static str],
    values: Vec<Option<String>>,
}

impl<'a> Values<'a> {
    fn new(selected: &'a [&'static str]) -> Self {
        Values {
            selected,
            values: vec![None; selected.len()],
        }
    }

    fn set(&mut self, field: &Field, value: impl FnOnce() -> String) {
        if let Some(index) = self.selected.iter().position(|&name| name == field.name()) {
            self.values[index] = Some(tags::bounded_value(value()));
        }
    }
}

impl Visit for Values<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field, || value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.set(field, || format!("{value:?}"));
    }
}

impl<S> Layer<S> for SpanLayer
where
    S: Subscriber + for<'lookup> LookupSpan<'lookup>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut own = Values::new(&self.fields);
        attrs.record(&mut own);
        let tagged = {
            let parent = span.parent();
            let parent_extensions = parent.as_ref().map(|parent| parent.extensions());
            let parent_tag = parent_extensions
                .as_ref()
                .and_then(|extensions| extensions.get::<Tagged>());
            self.tag_of(span.name(), &own, parent_tag)
        };
        span.extensions_mut().insert(tagged);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if self.fields.is_empty() {
            return;
        }
        let Some(span) = ctx.span(id) else { return };
        let mut own = Values::new(&self.fields);
        values.record(&mut own);
        if own.values.iter().all(Option::is_none) {
            return;
        }
        // Values recorded now replace the span's; the others stay as they were.
        let mut extensions = span.extensions_mut();
        let Some(tagged) = extensions.get_mut::<Tagged>() else {
            return;
        };
        *tagged = self.tag_of(span.name(), &own, Some(tagged));
        let tag = tagged.tag;
        // Where the span is entered on this thread, it carries its new tag from now on.
        let _ = ENTERED.try_with(|entered| {
            let mut entered = entered.borrow_mut();
            for entry in entered
                .iter_mut()
                .filter(|(span, _)| *span == id.into_u64())
            {
                entry.1 = tag;
            }
            if entered
                .last()
                .is_some_and(|&(span, _)| span == id.into_u64())
            {
                thread_state::set_span_tag(tag);
            }
        });
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let tag = span
            .extensions()
            .get::<Tagged>()
            .map_or(tags::NO_SPAN, |tagged| tagged.tag);
        let _ = ENTERED.try_with(|entered| entered.borrow_mut().push((id.into_u64(), tag)));
        thread_state::set_span_tag(tag);
    }

    fn on_exit(&self, id: &Id, _ctx: Context<'_, S>) {
        // As the registry does: the span leaves this thread's stack wherever it is in it (guards
        // may be dropped out of order), and the innermost span left is current.
        let tag = ENTERED
            .try_with(|entered| {
                let mut entered = entered.borrow_mut();
                if let Some(at) = entered.iter().rposition(|&(span, _)| span == id.into_u64()) {
                    entered.remove(at);
                }
                entered.last().map_or(tags::NO_SPAN, |&(_, tag)| tag)
            })
            .unwrap_or(tags::NO_SPAN);
        thread_state::set_span_tag(tag);
    }
}
