//! Which node to ask for an image, from what is already known, so that a
//! restore on a cluster of thousands of nodes starts a handful of Jobs,
//! not one per node. Pure: evidence in, the next step out.
//!
//! Evidence, strongest first: a node-exporter answer (a fresh inventory),
//! the node's `status.images` listing the image's digest-pinned name (the
//! kubelet's own record; it lists at most 50 images by default, so its
//! silence proves nothing), a pod on the node whose container status
//! `imageID` is the digest (or a policy's status naming the node for it),
//! this restore's own history (a node it imported the image into).
//!
//! A candidate is tried directly with the Job that does the work (an
//! export, or a serve for a node-to-node import): it exports when its node
//! holds the digest and reports `ImageNotOnNode` otherwise, so a known
//! holder costs one round of Jobs, not an inventory round and then an
//! export round. Candidates are tried one at a time per image (the
//! evidence is digest-exact, the first one is nearly always right), at
//! most `MAX_CANDIDATE_TRIES` of them. Only when no untried candidate is
//! left does the restore widen: inventory Jobs on at most `WIDEN_BATCH`
//! unasked nodes at a time, the next batch only once those all said no.

use std::collections::{BTreeMap, BTreeSet};

use super::planning::{Exportable, Holdings, NodeUse};

/// Candidates one image is tried on before the restore stops trusting the
/// evidence and widens to nodes nothing points at.
pub(crate) const MAX_CANDIDATE_TRIES: usize = 10;
/// Inventory Jobs one widening step starts at most (for all images).
pub(crate) const WIDEN_BATCH: usize = 10;
/// Node names a "not found" message lists before it counts the rest.
const NAMES_IN_MESSAGES: usize = 8;

/// Why a node is thought to hold an image, strongest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Evidence {
    /// A fresh node-exporter answer: it holds every blob.
    Exact,
    /// A fresh answer: it holds the index with one platform's content.
    Platform,
    /// The node's `status.images` lists the digest-pinned name.
    Listed,
    /// A pod on the node runs the digest, or a policy recorded the node.
    Running,
    /// This restore put the image on the node.
    History,
    /// A fresh answer: it holds the image only as unpacked layers (an
    /// export rebuilds it under another digest): the last resort.
    Rebuild,
}

impl Evidence {
    /// Whether node-exporter itself said so.
    pub(crate) fn is_answer(self) -> bool {
        matches!(
            self,
            Evidence::Exact | Evidence::Platform | Evidence::Rebuild
        )
    }

    /// The evidence an inventory answer is (`None`: it said no).
    pub(crate) fn from_answer(exportable: Exportable) -> Option<Evidence> {
        match exportable {
            Exportable::Exact => Some(Evidence::Exact),
            Exportable::Platform => Some(Evidence::Platform),
            Exportable::Rebuild => Some(Evidence::Rebuild),
            Exportable::None => None,
        }
    }
}

/// What is known about where the images are, per image argument
/// (`planning::image_argument`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Knowledge {
    /// Evidence other than node-exporter's answers: image → node → why.
    pub(crate) pointers: BTreeMap<String, BTreeMap<String, Evidence>>,
    /// Fresh node-exporter answers (`Exportable::None`: it said no).
    pub(crate) answers: Holdings,
    /// Nodes this restore tried for the image, or that answered no to it:
    /// not asked again by this restore.
    pub(crate) tried: BTreeMap<String, BTreeSet<String>>,
}

impl Knowledge {
    /// Records a pointer, keeping the strongest per node.
    pub(crate) fn point(&mut self, image: &str, node: &str, evidence: Evidence) {
        let nodes = self.pointers.entry(image.to_owned()).or_default();
        let kept = nodes.entry(node.to_owned()).or_insert(evidence);
        *kept = (*kept).min(evidence);
    }

    fn answer(&self, node: &str, image: &str) -> Option<Exportable> {
        self.answers.get(node)?.get(image).copied()
    }

    fn tried(&self, image: &str) -> Option<&BTreeSet<String>> {
        self.tried.get(image)
    }
}

/// What to do next for one image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum NextStep {
    /// Run the working Job on this node now.
    Try { node: String, evidence: Evidence },
    /// Nothing untried points anywhere: ask these nodes (inventory).
    Ask(Vec<String>),
    /// Every usable node answered no or was tried: why, shortly.
    NotFound(String),
}

/// The usable candidates of `image`, best first: preferred (schedulable)
/// nodes before cordoned ones, then by evidence, then by name
/// (deterministic). Nodes tried or that answered no are left out.
pub(crate) fn ranked_candidates(
    image: &str,
    uses: &BTreeMap<String, NodeUse>,
    knowledge: &Knowledge,
) -> Vec<(String, Evidence)> {
    let tried = knowledge.tried(image);
    let mut evidence: BTreeMap<&str, Evidence> = BTreeMap::new();
    if let Some(pointers) = knowledge.pointers.get(image) {
        for (node, why) in pointers {
            evidence.insert(node, *why);
        }
    }
    for (node, held) in &knowledge.answers {
        match held.get(image).copied() {
            Some(Exportable::None) => {
                evidence.remove(node.as_str());
            }
            Some(answer) => {
                if let Some(why) = Evidence::from_answer(answer) {
                    // An answer replaces weaker pointers, and a Rebuild
                    // answer demotes a Listed pointer (the node said how).
                    evidence.insert(node, why);
                }
            }
            None => {}
        }
    }
    let mut ranked: Vec<(u8, Evidence, &str)> = evidence
        .into_iter()
        .filter(|(node, _)| tried.is_none_or(|t| !t.contains(*node)))
        .filter_map(|(node, why)| {
            let rank = match uses.get(node)? {
                NodeUse::Preferred => 0,
                NodeUse::LastResort => 1,
                NodeUse::Excluded(_) => return None,
            };
            Some((rank, why, node))
        })
        .collect();
    ranked.sort();
    ranked
        .into_iter()
        .map(|(_, why, node)| (node.to_owned(), why))
        .collect()
}

/// The next step for one image: its best untried candidate while fewer
/// than `MAX_CANDIDATE_TRIES` were tried, else the next `WIDEN_BATCH`
/// usable nodes with no answer about it yet, else not found.
pub(crate) fn next_step(
    image: &str,
    uses: &BTreeMap<String, NodeUse>,
    knowledge: &Knowledge,
) -> NextStep {
    // Past the budget only node-exporter's own answers (a widening's
    // results) are still worth a Job.
    let over_budget = knowledge.tried(image).map_or(0, BTreeSet::len) >= MAX_CANDIDATE_TRIES;
    if let Some((node, evidence)) = ranked_candidates(image, uses, knowledge)
        .into_iter()
        .find(|(_, why)| !over_budget || why.is_answer())
    {
        return NextStep::Try { node, evidence };
    }
    let tried = knowledge.tried(image);
    let mut unasked: Vec<(u8, &str)> = uses
        .iter()
        .filter(|(node, _)| knowledge.answer(node, image).is_none())
        .filter(|(node, _)| tried.is_none_or(|t| !t.contains(*node)))
        .filter_map(|(node, use_)| match use_ {
            NodeUse::Preferred => Some((0, node.as_str())),
            NodeUse::LastResort => Some((1, node.as_str())),
            NodeUse::Excluded(_) => None,
        })
        .collect();
    if !unasked.is_empty() {
        unasked.sort();
        return NextStep::Ask(
            unasked
                .into_iter()
                .take(WIDEN_BATCH)
                .map(|(_, n)| n.to_owned())
                .collect(),
        );
    }
    NextStep::NotFound(not_found_message(image, uses, knowledge))
}

/// "no node holds IMAGE (asked: a, b, … and N more); not usable: …",
/// short even on a cluster of thousands of nodes.
fn not_found_message(
    image: &str,
    uses: &BTreeMap<String, NodeUse>,
    knowledge: &Knowledge,
) -> String {
    let asked: Vec<&str> = uses
        .iter()
        .filter(|(_, u)| !matches!(u, NodeUse::Excluded(_)))
        .map(|(n, _)| n.as_str())
        .collect();
    let excluded: Vec<String> = uses
        .iter()
        .filter_map(|(n, u)| match u {
            NodeUse::Excluded(why) => Some(format!("{n} ({why})")),
            _ => None,
        })
        .collect();
    let candidates_only = knowledge.tried(image).map_or(0, BTreeSet::len) >= MAX_CANDIDATE_TRIES;
    let mut message = format!("no node holds {image} (asked: {})", shortened(&asked));
    if candidates_only {
        message.push_str(&format!(
            "; {MAX_CANDIDATE_TRIES} nodes that seemed to hold it could not export it"
        ));
    }
    if !excluded.is_empty() {
        let excluded: Vec<&str> = excluded.iter().map(String::as_str).collect();
        message.push_str(&format!("; not usable: {}", shortened(&excluded)));
    }
    message
}

fn shortened(items: &[&str]) -> String {
    if items.is_empty() {
        return "none".to_owned();
    }
    let shown = items[..items.len().min(NAMES_IN_MESSAGES)].join(", ");
    match items.len().checked_sub(NAMES_IN_MESSAGES) {
        Some(rest) if rest > 0 => format!("{shown} and {rest} more"),
        _ => shown,
    }
}

/// The inventory Jobs a set of `Ask` steps calls for: the nodes, each
/// with the images to ask it about, at most `WIDEN_BATCH` nodes (the ones
/// most images wait for first).
pub(crate) fn inventory_batch(
    asks: &BTreeMap<String, Vec<String>>,
) -> BTreeMap<String, Vec<String>> {
    let mut per_node: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (image, nodes) in asks {
        for node in nodes {
            per_node.entry(node).or_default().push(image.clone());
        }
    }
    let mut order: Vec<(usize, &str)> = per_node
        .iter()
        .map(|(node, images)| (usize::MAX - images.len(), *node))
        .collect();
    order.sort();
    order
        .into_iter()
        .take(WIDEN_BATCH)
        .filter_map(|(_, node)| {
            let mut images = per_node.get(node)?.clone();
            images.sort();
            images.dedup();
            Some((node.to_owned(), images))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uses(n: usize) -> BTreeMap<String, NodeUse> {
        (0..n)
            .map(|i| (format!("n{i:04}"), NodeUse::Preferred))
            .collect()
    }

    fn knowledge_with(pointers: &[(&str, Evidence)]) -> Knowledge {
        let mut k = Knowledge::default();
        for (node, why) in pointers {
            k.point("img", node, *why);
        }
        k
    }

    #[test]
    fn a_listed_holder_among_thousands_is_tried_directly_with_no_inventory() {
        let nodes = uses(5000);
        let k = knowledge_with(&[("n4000", Evidence::Listed), ("n0100", Evidence::Running)]);
        assert_eq!(
            next_step("img", &nodes, &k),
            NextStep::Try {
                node: "n4000".into(),
                evidence: Evidence::Listed
            },
            "status.images beats a pod, whatever the name order"
        );
    }

    #[test]
    fn answers_beat_pointers_and_a_no_removes_a_pointer() {
        let nodes = uses(3);
        let mut k = knowledge_with(&[("n0000", Evidence::Listed), ("n0001", Evidence::History)]);
        k.answers
            .entry("n0002".into())
            .or_default()
            .insert("img".into(), Exportable::Exact);
        k.answers
            .entry("n0000".into())
            .or_default()
            .insert("img".into(), Exportable::None);
        let ranked = ranked_candidates("img", &nodes, &k);
        assert_eq!(
            ranked,
            vec![
                ("n0002".to_owned(), Evidence::Exact),
                ("n0001".to_owned(), Evidence::History)
            ]
        );
        // A node that answers "only by rebuilding" goes last.
        k.answers
            .entry("n0001".into())
            .or_default()
            .insert("img".into(), Exportable::Rebuild);
        let ranked = ranked_candidates("img", &nodes, &k);
        assert_eq!(ranked[1], ("n0001".to_owned(), Evidence::Rebuild));
    }

    #[test]
    fn cordoned_and_excluded_nodes_and_tried_ones_are_ranked_accordingly() {
        let mut nodes = uses(3);
        nodes.insert("n0000".into(), NodeUse::LastResort);
        nodes.insert("n0001".into(), NodeUse::Excluded("NotReady".into()));
        let mut k = knowledge_with(&[
            ("n0000", Evidence::Listed),
            ("n0001", Evidence::Listed),
            ("n0002", Evidence::History),
            ("gone", Evidence::Listed),
        ]);
        assert_eq!(
            ranked_candidates("img", &nodes, &k),
            vec![
                ("n0002".to_owned(), Evidence::History),
                ("n0000".to_owned(), Evidence::Listed)
            ],
            "schedulable first; NotReady and unknown nodes never"
        );
        k.tried
            .entry("img".into())
            .or_default()
            .insert("n0002".into());
        assert_eq!(
            next_step("img", &nodes, &k),
            NextStep::Try {
                node: "n0000".into(),
                evidence: Evidence::Listed
            }
        );
    }

    #[test]
    fn with_nothing_known_the_restore_widens_a_bounded_batch_at_a_time() {
        let nodes = uses(5000);
        let mut k = Knowledge::default();
        let NextStep::Ask(first) = next_step("img", &nodes, &k) else {
            panic!("nothing is known: ask")
        };
        assert_eq!(first.len(), WIDEN_BATCH);
        // They all said no: the next batch, never the same nodes.
        for node in &first {
            k.answers
                .entry(node.clone())
                .or_default()
                .insert("img".into(), Exportable::None);
        }
        let NextStep::Ask(second) = next_step("img", &nodes, &k) else {
            panic!("still unasked nodes")
        };
        assert_eq!(second.len(), WIDEN_BATCH);
        assert!(second.iter().all(|n| !first.contains(n)));
        // One says yes: it is tried.
        k.answers
            .entry(second[3].clone())
            .or_default()
            .insert("img".into(), Exportable::Platform);
        assert!(matches!(
            next_step("img", &nodes, &k),
            NextStep::Try { node, evidence: Evidence::Platform } if node == second[3]
        ));
    }

    #[test]
    fn after_the_candidate_budget_the_restore_widens_then_gives_up_with_a_short_message() {
        let nodes = uses(30);
        let mut k = Knowledge::default();
        for i in 0..20 {
            k.point("img", &format!("n{i:04}"), Evidence::Running);
        }
        let tried: BTreeSet<String> = (0..MAX_CANDIDATE_TRIES)
            .map(|i| format!("n{i:04}"))
            .collect();
        k.tried.insert("img".into(), tried);
        let NextStep::Ask(batch) = next_step("img", &nodes, &k) else {
            panic!("the budget is spent: widen")
        };
        assert_eq!(batch.first().map(String::as_str), Some("n0010"));
        // A widening's own answer is tried even past the budget.
        k.answers
            .entry("n0025".into())
            .or_default()
            .insert("img".into(), Exportable::Exact);
        assert!(matches!(
            next_step("img", &nodes, &k),
            NextStep::Try { node, .. } if node == "n0025"
        ));
        for i in 0..30 {
            k.answers
                .entry(format!("n{i:04}"))
                .or_default()
                .insert("img".into(), Exportable::None);
        }
        let NextStep::NotFound(message) = next_step("img", &nodes, &k) else {
            panic!("every node said no")
        };
        assert!(message.contains("and 22 more"), "{message}");
        assert!(message.contains("could not export it"), "{message}");
        assert!(message.len() < 400, "{message}");
    }

    #[test]
    fn an_inventory_batch_is_bounded_and_asks_each_node_about_all_its_images() {
        let asks: BTreeMap<String, Vec<String>> = [
            (
                "a".to_owned(),
                (0..12).map(|i| format!("n{i:02}")).collect(),
            ),
            ("b".to_owned(), vec!["n11".to_owned(), "n05".to_owned()]),
        ]
        .into();
        let batch = inventory_batch(&asks);
        assert_eq!(batch.len(), WIDEN_BATCH);
        assert_eq!(batch["n05"], vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(batch["n11"], vec!["a".to_owned(), "b".to_owned()]);
        assert!(
            !batch.contains_key("n10"),
            "nodes most images wait on first"
        );
    }
}
