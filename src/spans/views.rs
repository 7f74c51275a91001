//! What the outputs read of the span labels: a sample's span as one name, live heap by span,
//! culprits split by span (for leak suspects), and a profile whose stacks are rooted at their
//! span (for flamegraphs).

use super::tags::SPAN_LABEL;
use crate::plumbing::Plumbing;
use crate::profile::{Line, Location, Profile, SampleType};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// How samples outside every span read in the by-span views.
pub const NO_SPAN_NAME: &str = "[no span]";

/// The span of a sample as one name: `request{route=/export, tenant=acme}`, the span's name
/// alone when no field was selected, `None` outside every span.
///
/// ```
/// let labels = vec![("span".to_owned(), "request".to_owned()), ("route".to_owned(), "/export".to_owned())];
/// assert_eq!(heapwatch::spans::span_name(&labels).as_deref(), Some("request{route=/export}"));
/// assert_eq!(heapwatch::spans::span_name(&[]), None);
/// ```
pub fn span_name(labels: &[(String, String)]) -> Option<String> {
    let name = labels.iter().find(|(key, _)| key == SPAN_LABEL)?;
    let fields: Vec<String> = labels
        .iter()
        .filter(|(key, _)| key != SPAN_LABEL)
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    Some(if fields.is_empty() {
        name.1.clone()
    } else {
        format!("{}{{{}}}", name.1, fields.join(", "))
    })
}

/// One span's share of a profile: a row of [`by_span`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpanTotal {
    /// The span as [`span_name`] writes it, or [`NO_SPAN_NAME`].
    pub span: String,
    /// Estimated live bytes allocated in it.
    pub inuse_bytes: i64,
    /// Estimated live blocks allocated in it.
    pub inuse_objects: i64,
    /// Estimated bytes allocated in it since start (0 in a thread's or a delta's view).
    pub alloc_bytes: i64,
}

/// Live heap by span, largest `inuse_bytes` first (then by name); empty when no sample carries
/// a span, so a service without the layer sees no by-span table at all.
pub fn by_span(profile: &Profile) -> Vec<SpanTotal> {
    if profile
        .samples
        .iter()
        .all(|sample| sample.labels.is_empty())
    {
        return Vec::new();
    }
    let mut totals: HashMap<String, SpanTotal> = HashMap::new();
    for sample in &profile.samples {
        let span = span_name(&sample.labels).unwrap_or_else(|| NO_SPAN_NAME.to_owned());
        let total = totals.entry(span.clone()).or_insert(SpanTotal {
            span,
            inuse_bytes: 0,
            inuse_objects: 0,
            alloc_bytes: 0,
        });
        total.inuse_bytes = total
            .inuse_bytes
            .saturating_add(sample.value(SampleType::InuseSpace));
        total.inuse_objects = total
            .inuse_objects
            .saturating_add(sample.value(SampleType::InuseObjects));
        total.alloc_bytes = total
            .alloc_bytes
            .saturating_add(sample.value(SampleType::AllocSpace));
    }
    let mut list: Vec<SpanTotal> = totals.into_values().collect();
    list.sort_by(|a, b| {
        b.inuse_bytes
            .cmp(&a.inuse_bytes)
            .then_with(|| a.span.cmp(&b.span))
    });
    list
}

/// Per culprit function (as [`Profile::culprits`] names them), its live bytes in each span;
/// empty when no sample carries a span.
pub(crate) fn culprits_by_span(
    profile: &Profile,
    plumbing: &Plumbing,
) -> HashMap<String, HashMap<String, i64>> {
    let mut found: HashMap<String, HashMap<String, i64>> = HashMap::new();
    if profile
        .samples
        .iter()
        .all(|sample| sample.labels.is_empty())
    {
        return found;
    }
    let culprits = profile.sample_culprits(plumbing);
    for (sample, culprit) in profile.samples.iter().zip(culprits) {
        let value = sample.value(SampleType::InuseSpace);
        let Some(culprit) = culprit.filter(|_| value != 0) else {
            continue;
        };
        let span = span_name(&sample.labels).unwrap_or_else(|| NO_SPAN_NAME.to_owned());
        let bytes = found.entry(culprit).or_default().entry(span).or_insert(0);
        *bytes = bytes.saturating_add(value);
    }
    found
}

/// `profile` with each stack rooted at a frame naming its span (`span: request{route=/a}`, or
/// `[no span]`): a flamegraph of it splits first by span, then by call path.
///
/// ```
/// let by_span = heapwatch::spans::rooted_at_spans(&heapwatch::snapshot());
/// # let _ = by_span;
/// ```
pub fn rooted_at_spans(profile: &Profile) -> Profile {
    let mut rooted = profile.clone();
    let mut root_of_span: HashMap<String, usize> = HashMap::new();
    for sample in &mut rooted.samples {
        let name = match span_name(&sample.labels) {
            Some(span) => format!("span: {span}"),
            None => NO_SPAN_NAME.to_owned(),
        };
        let locations = &mut rooted.locations;
        let root = *root_of_span.entry(name).or_insert_with_key(|name| {
            locations.push(Location {
                lines: vec![Line {
                    function: name.clone(),
                    ..Line::default()
                }],
                ..Location::default()
            });
            locations.len() - 1
        });
        sample.locations.push(root);
    }
    rooted
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Sample;

    /// A sample under `labels`.
    pub(crate) fn labelled(
        locations: Vec<usize>,
        values: [i64; 4],
        labels: &[(&str, &str)],
    ) -> Sample {
        Sample {
            locations,
            values,
            labels: labels
                .iter()
                .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                .collect(),
        }
    }

    fn profile() -> Profile {
        let location = |name: &str| Location {
            lines: vec![Line {
                function: name.into(),
                ..Line::default()
            }],
            ..Location::default()
        };
        Profile {
            locations: vec![location("leak"), location("serve"), location("alloc")],
            samples: vec![
                labelled(
                    vec![2, 0, 1],
                    [1, 100, 1, 100],
                    &[("span", "request"), ("route", "/leak")],
                ),
                labelled(
                    vec![2, 1],
                    [1, 10, 1, 10],
                    &[("span", "request"), ("route", "/ok")],
                ),
                labelled(vec![1], [1, 5, 1, 5], &[]),
            ],
            ..Profile::default()
        }
    }

    #[test]
    fn live_heap_by_span_largest_first() {
        let spans: Vec<(String, i64)> = by_span(&profile())
            .into_iter()
            .map(|total| (total.span, total.inuse_bytes))
            .collect();
        assert_eq!(
            spans,
            [
                ("request{route=/leak}".to_owned(), 100),
                ("request{route=/ok}".to_owned(), 10),
                (NO_SPAN_NAME.to_owned(), 5)
            ]
        );
        assert!(by_span(&Profile::default()).is_empty());
    }

    #[test]
    fn culprits_split_by_span() {
        let plumbing = Plumbing::none().with("alloc");
        let found = culprits_by_span(&profile(), &plumbing);
        assert_eq!(found["leak"]["request{route=/leak}"], 100);
        assert_eq!(found["serve"]["request{route=/ok}"], 10);
        assert_eq!(found["serve"][NO_SPAN_NAME], 5);
    }

    #[test]
    fn stacks_rooted_at_their_span() {
        let rooted = rooted_at_spans(&profile());
        let roots: Vec<String> = rooted
            .samples
            .iter()
            .map(|sample| rooted.stack_names(sample).last().unwrap())
            .collect();
        assert_eq!(
            roots,
            [
                "span: request{route=/leak}",
                "span: request{route=/ok}",
                NO_SPAN_NAME
            ]
        );
        assert_eq!(rooted.locations.len(), 6);
    }
}
