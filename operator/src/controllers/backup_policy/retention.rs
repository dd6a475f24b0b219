//! Retention: which of Lifeboat's own backups in a target repository are
//! deleted. Pure: the reconciler lists the repository and hands in what it
//! found, what is in use and the time.
//!
//! **Which images are Lifeboat's.** Every digest Lifeboat backs up carries
//! its deterministic tag `lifeboat-<algorithm>-<hex>` (see
//! `registry_transfer::deterministic_tag`), named after the source digest.
//! Retention only ever considers manifests such a tag points at; anything
//! else in the repository (other tools' pushes, images people tagged by
//! hand) is never looked at, let alone deleted. A deletion is by digest,
//! which also removes the other tags on that digest (in registries that
//! follow distribution).
//!
//! **Age** is the image's creation time from its config (`created`), the
//! only time a registry keeps with an image. An image without one, or with
//! a time at the Unix epoch (reproducible builds write that), has no known
//! age: it is never deleted for age and counts as older than every dated
//! image for `keepLast`.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, TimeDelta, Utc};
use lifeboat_api::backup_policy::Retention;

use super::discovery::Inventory;

/// The prefix of Lifeboat's deterministic tags.
pub const LIFEBOAT_TAG_PREFIX: &str = "lifeboat-";

/// Creation times before this are placeholders, not ages.
const EARLIEST_REAL_TIME: i64 = 86_400;

/// The retention rules of a policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    pub keep_last: Option<usize>,
    pub max_age: Option<TimeDelta>,
}

impl Rules {
    /// The rules of `spec.retention`; `None` keeps everything (also for a
    /// retention with neither field, which the API refuses anyway).
    pub fn from_spec(retention: Option<&Retention>) -> Option<Rules> {
        let retention = retention?;
        let keep_last = retention
            .keep_last
            .map(|n| usize::try_from(n.max(1)).unwrap_or(1));
        let max_age = retention
            .max_age_days
            .map(|days| TimeDelta::days(i64::from(days.max(1))));
        (keep_last.is_some() || max_age.is_some()).then_some(Rules { keep_last, max_age })
    }
}

/// The source digest a Lifeboat tag is named after
/// (`lifeboat-sha256-<hex>` → `sha256:<hex>`), or `None` for any other tag.
pub fn lifeboat_tag_digest(tag: &str) -> Option<String> {
    let rest = tag.strip_prefix(LIFEBOAT_TAG_PREFIX)?;
    let (algorithm, hex) = rest.split_once('-')?;
    let digest = format!("{algorithm}:{hex}");
    lifeboat_api::Digest::parse(&digest).ok()?;
    Some(digest)
}

/// An image config's `created`, as a time; `None` when absent, unparsable
/// or a placeholder at the epoch.
pub fn parse_created(created: Option<&str>) -> Option<DateTime<Utc>> {
    let time = DateTime::parse_from_rfc3339(created?.trim())
        .ok()?
        .with_timezone(&Utc);
    (time.timestamp() >= EARLIEST_REAL_TIME).then_some(time)
}

/// One Lifeboat tag found in a target repository, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backup {
    pub tag: String,
    /// The digest the tag points at in the target (the source digest, or a
    /// platform-filtered index).
    pub digest: String,
    pub created: Option<DateTime<Utc>>,
    /// An index's child manifests (digests): their referrers belong to it.
    pub children: Vec<String>,
}

/// Why a backup goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteReason {
    /// Older than `maxAgeDays`.
    OlderThanMaxAge,
    /// Not among the `keepLast` newest.
    BeyondKeepLast,
}

/// A digest to delete from a repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deletion {
    pub digest: String,
    pub tags: Vec<String>,
    pub created: Option<DateTime<Utc>>,
    pub reason: DeleteReason,
}

/// Digests in use. A backup is in use when the digest it points at, or the
/// source digest its tag is named after, is in the set.
pub type InUse = BTreeSet<String>;

/// What to delete from one repository: of Lifeboat's digests (newest
/// first by creation time), every one not in use that is beyond the
/// `keepLast` newest or older than `maxAgeDays`.
pub fn plan_deletions(
    rules: &Rules,
    backups: &[Backup],
    in_use: &InUse,
    now: DateTime<Utc>,
) -> Vec<Deletion> {
    struct Group {
        tags: Vec<String>,
        created: Option<DateTime<Utc>>,
        in_use: bool,
    }
    let mut groups: BTreeMap<&str, Group> = BTreeMap::new();
    for backup in backups {
        let Some(source_digest) = lifeboat_tag_digest(&backup.tag) else {
            continue;
        };
        let used = in_use.contains(&backup.digest) || in_use.contains(&source_digest);
        let group = groups.entry(&backup.digest).or_insert(Group {
            tags: Vec::new(),
            created: backup.created,
            in_use: false,
        });
        group.tags.push(backup.tag.clone());
        group.in_use |= used;
        group.created = group.created.max(backup.created);
    }
    let mut ordered: Vec<(&str, Group)> = groups.into_iter().collect();
    // Newest first; undated after every dated one; then by digest, so the
    // same repository always gives the same plan.
    ordered.sort_by(|(da, a), (db, b)| match (a.created, b.created) {
        (Some(x), Some(y)) => y.cmp(&x).then(da.cmp(db)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => da.cmp(db),
    });
    let mut deletions = Vec::new();
    for (rank, (digest, mut group)) in ordered.into_iter().enumerate() {
        if group.in_use {
            continue;
        }
        let too_old = rules
            .max_age
            .zip(group.created)
            .is_some_and(|(max_age, created)| now - created > max_age);
        let beyond = rules.keep_last.is_some_and(|n| rank >= n);
        let reason = if too_old {
            DeleteReason::OlderThanMaxAge
        } else if beyond {
            DeleteReason::BeyondKeepLast
        } else {
            continue;
        };
        group.tags.sort();
        deletions.push(Deletion {
            digest: digest.to_owned(),
            tags: group.tags,
            created: group.created,
            reason,
        });
    }
    deletions
}

/// What stays in a repository when `deletions` go: every other backup
/// with its child manifests, and whatever is in use there. The referrers
/// of these are never deleted with a backup that goes (a platform
/// manifest two indexes share keeps its signature). Pure.
pub fn kept_subjects(
    backups: &[Backup],
    deletions: &[Deletion],
    in_use: &InUse,
) -> BTreeSet<String> {
    let going: BTreeSet<&str> = deletions.iter().map(|d| d.digest.as_str()).collect();
    let mut kept: BTreeSet<String> = in_use.clone();
    for backup in backups
        .iter()
        .filter(|b| !going.contains(b.digest.as_str()))
    {
        kept.insert(backup.digest.clone());
        kept.extend(backup.children.iter().cloned());
    }
    kept
}

/// When retention looks at the targets.
#[derive(Clone, Copy, Debug)]
pub struct RetentionTiming {
    /// When it last did, and for which generation of the policy.
    pub last: Option<(DateTime<Utc>, i64)>,
    pub generation: i64,
    pub now: DateTime<Utc>,
    /// The source-check interval.
    pub interval: TimeDelta,
    /// A backup run finished in this reconcile.
    pub run_finished: bool,
    pub suspended: bool,
}

/// Whether retention runs now: after every run (an on-demand one too, also
/// while suspended), and otherwise, unless suspended, when the spec changed
/// or once per interval.
pub fn retention_due(timing: &RetentionTiming) -> bool {
    if timing.run_finished {
        return true;
    }
    if timing.suspended {
        return false;
    }
    timing.last.is_none_or(|(at, generation)| {
        generation != timing.generation || timing.now - at >= timing.interval
    })
}

/// Every digest that must stay: what the policy's workloads use (and the
/// digests their by-tag images were last copied as), what is reported
/// missing (a backup may be the only copy left), and whatever any pod in
/// the cluster runs, so that two policies sharing a repository can never
/// delete each other's images in use.
pub fn in_use_digests<'a>(
    inventory: &Inventory,
    copied_digests: impl IntoIterator<Item = &'a String>,
    missing_digests: impl IntoIterator<Item = &'a String>,
    running_anywhere: &BTreeSet<String>,
) -> InUse {
    let mut in_use: InUse = inventory
        .images
        .values()
        .filter_map(|i| i.reference.digest.as_ref().map(|d| d.as_str().to_owned()))
        .collect();
    in_use.extend(copied_digests.into_iter().cloned());
    in_use.extend(missing_digests.into_iter().cloned());
    in_use.extend(running_anywhere.iter().cloned());
    in_use.retain(|d| !d.is_empty());
    in_use
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use lifeboat_api::ImageReference;

    use super::super::discovery::{ImageUse, image_key};
    use super::*;

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn tag(c: char) -> String {
        format!("lifeboat-sha256-{}", c.to_string().repeat(64))
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-30T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn days_ago(days: i64) -> Option<DateTime<Utc>> {
        Some(now() - TimeDelta::days(days))
    }

    fn backup(c: char, created: Option<DateTime<Utc>>) -> Backup {
        Backup {
            tag: tag(c),
            digest: digest(c),
            created,
            children: Vec::new(),
        }
    }

    fn deleted(plan: &[Deletion]) -> Vec<(String, DeleteReason)> {
        plan.iter().map(|d| (d.digest.clone(), d.reason)).collect()
    }

    fn rules(keep_last: Option<usize>, max_age_days: Option<i64>) -> Rules {
        Rules {
            keep_last,
            max_age: max_age_days.map(TimeDelta::days),
        }
    }

    #[test]
    fn what_stays_is_every_other_backup_with_its_platforms_and_what_is_in_use() {
        let mut shared = backup('a', days_ago(1));
        shared.children = vec![digest('1'), digest('2')];
        let mut old = backup('b', days_ago(400));
        old.children = vec![digest('1'), digest('3')];
        let backups = [shared, old, backup('c', days_ago(500))];
        let plan = plan_deletions(&rules(Some(1), None), &backups, &InUse::new(), now());
        assert_eq!(plan.len(), 2);
        let in_use: InUse = [digest('9')].into();
        let kept = kept_subjects(&backups, &plan, &in_use);
        let wanted: BTreeSet<String> = [digest('a'), digest('1'), digest('2'), digest('9')].into();
        assert_eq!(kept, wanted, "b's own platform 3 goes, the shared 1 stays");
        assert!(kept_subjects(&backups, &[], &InUse::new()).contains(&digest('3')));
    }

    #[test]
    fn keeps_the_newest_and_deletes_the_rest() {
        let backups = [
            backup('a', days_ago(30)),
            backup('b', days_ago(1)),
            backup('c', days_ago(10)),
            backup('d', days_ago(20)),
        ];
        let plan = plan_deletions(&rules(Some(2), None), &backups, &InUse::new(), now());
        assert_eq!(
            deleted(&plan),
            vec![
                (digest('d'), DeleteReason::BeyondKeepLast),
                (digest('a'), DeleteReason::BeyondKeepLast),
            ]
        );
        assert_eq!(plan[0].tags, vec![tag('d')]);
        // Fewer than keepLast: nothing goes.
        assert!(plan_deletions(&rules(Some(4), None), &backups, &InUse::new(), now()).is_empty());
    }

    #[test]
    fn deletes_what_is_older_than_max_age_even_among_the_newest() {
        let backups = [
            backup('a', days_ago(100)),
            backup('b', days_ago(1)),
            backup('c', days_ago(89)),
        ];
        let plan = plan_deletions(&rules(Some(10), Some(90)), &backups, &InUse::new(), now());
        assert_eq!(
            deleted(&plan),
            vec![(digest('a'), DeleteReason::OlderThanMaxAge)]
        );
        let only_age = plan_deletions(&rules(None, Some(5)), &backups, &InUse::new(), now());
        assert_eq!(only_age.len(), 2);
        assert!(
            only_age
                .iter()
                .all(|d| d.reason == DeleteReason::OlderThanMaxAge)
        );
    }

    #[test]
    fn never_deletes_an_image_in_use_by_target_or_source_digest() {
        let backups = [
            backup('a', days_ago(1000)),
            backup('b', days_ago(1)),
            // A platform-filtered copy: the tag names the source digest 'c',
            // the target holds a different index 'e'.
            Backup {
                tag: tag('c'),
                digest: digest('e'),
                created: days_ago(900),
                children: Vec::new(),
            },
            backup('d', days_ago(800)),
        ];
        let in_use: InUse = [digest('a'), digest('c')].into();
        let plan = plan_deletions(&rules(Some(1), Some(30)), &backups, &in_use, now());
        assert_eq!(
            deleted(&plan),
            vec![(digest('d'), DeleteReason::OlderThanMaxAge)]
        );
        // In use by the target digest too.
        let in_use: InUse = [digest('a'), digest('e'), digest('d')].into();
        assert!(plan_deletions(&rules(Some(1), Some(30)), &backups, &in_use, now()).is_empty());
    }

    #[test]
    fn only_lifeboat_tags_are_considered() {
        let backups = [
            Backup {
                tag: "1.0".into(),
                digest: digest('a'),
                created: days_ago(1000),
                children: Vec::new(),
            },
            Backup {
                tag: "sha256-aaaa".into(),
                digest: digest('b'),
                created: days_ago(1000),
                children: Vec::new(),
            },
            Backup {
                tag: "lifeboat-sha256-nothex".into(),
                digest: digest('c'),
                created: days_ago(1000),
                children: Vec::new(),
            },
        ];
        assert!(
            plan_deletions(&rules(Some(1), Some(1)), &backups, &InUse::new(), now()).is_empty()
        );
        assert_eq!(lifeboat_tag_digest(&tag('f')), Some(digest('f')));
        assert_eq!(lifeboat_tag_digest("lifeboat-sha256-abc"), None);
        assert_eq!(lifeboat_tag_digest("latest"), None);
    }

    #[test]
    fn undated_images_are_never_too_old_and_rank_last() {
        let backups = [
            backup('a', None),
            backup('b', days_ago(2)),
            backup('c', None),
            backup('d', days_ago(1)),
        ];
        let by_age = plan_deletions(&rules(None, Some(1)), &backups, &InUse::new(), now());
        assert_eq!(
            deleted(&by_age),
            vec![(digest('b'), DeleteReason::OlderThanMaxAge)]
        );
        let by_count = plan_deletions(&rules(Some(3), None), &backups, &InUse::new(), now());
        // Dated d, b first, then undated a, c by digest: c is beyond.
        assert_eq!(
            deleted(&by_count),
            vec![(digest('c'), DeleteReason::BeyondKeepLast)]
        );
        assert_eq!(parse_created(Some("1970-01-01T00:00:00Z")), None);
        assert_eq!(parse_created(Some("not a time")), None);
        assert_eq!(parse_created(None), None);
        assert_eq!(
            parse_created(Some("2026-11-29T12:00:00.123+01:00")),
            Some(
                DateTime::parse_from_rfc3339("2026-11-29T11:00:00.123Z")
                    .unwrap()
                    .with_timezone(&Utc)
            )
        );
    }

    #[test]
    fn several_lifeboat_tags_on_one_digest_go_together() {
        let backups = [
            backup('a', days_ago(50)),
            Backup {
                tag: tag('b'),
                digest: digest('a'),
                created: days_ago(50),
                children: Vec::new(),
            },
            backup('c', days_ago(1)),
        ];
        let plan = plan_deletions(&rules(Some(1), None), &backups, &InUse::new(), now());
        assert_eq!(plan.len(), 1);
        assert_eq!(plan[0].tags, vec![tag('a'), tag('b')]);
        // If either source digest is in use, the digest stays.
        let in_use: InUse = [digest('b')].into();
        assert!(plan_deletions(&rules(Some(1), None), &backups, &in_use, now()).is_empty());
    }

    #[test]
    fn the_same_repository_gives_the_same_plan_in_any_order() {
        let mut backups = vec![
            backup('a', days_ago(5)),
            backup('b', days_ago(5)),
            backup('c', days_ago(5)),
        ];
        let first = plan_deletions(&rules(Some(1), None), &backups, &InUse::new(), now());
        backups.reverse();
        let second = plan_deletions(&rules(Some(1), None), &backups, &InUse::new(), now());
        assert_eq!(first, second);
        assert_eq!(
            deleted(&first),
            vec![
                (digest('b'), DeleteReason::BeyondKeepLast),
                (digest('c'), DeleteReason::BeyondKeepLast)
            ]
        );
    }

    #[test]
    fn retention_runs_after_runs_on_changes_and_on_an_interval_not_while_suspended() {
        let timing = RetentionTiming {
            last: Some((now(), 4)),
            generation: 4,
            now: now() + TimeDelta::seconds(5),
            interval: TimeDelta::seconds(20),
            run_finished: false,
            suspended: false,
        };
        assert!(!retention_due(&timing));
        assert!(retention_due(&RetentionTiming {
            run_finished: true,
            ..timing
        }));
        assert!(retention_due(&RetentionTiming {
            generation: 5,
            ..timing
        }));
        assert!(retention_due(&RetentionTiming {
            now: now() + TimeDelta::seconds(20),
            ..timing
        }));
        assert!(retention_due(&RetentionTiming {
            last: None,
            ..timing
        }));
        // Suspended: only with a run (on demand).
        let suspended = RetentionTiming {
            last: None,
            suspended: true,
            ..timing
        };
        assert!(!retention_due(&suspended));
        assert!(retention_due(&RetentionTiming {
            run_finished: true,
            ..suspended
        }));
    }

    #[test]
    fn rules_from_the_spec() {
        assert_eq!(Rules::from_spec(None), None);
        assert_eq!(Rules::from_spec(Some(&Retention::default())), None);
        assert_eq!(
            Rules::from_spec(Some(&Retention {
                keep_last: Some(3),
                max_age_days: Some(7)
            })),
            Some(rules(Some(3), Some(7)))
        );
    }

    #[test]
    fn in_use_covers_inventory_copies_missing_and_the_whole_cluster() {
        let mut inventory = Inventory::default();
        for r in [
            format!("reg.local/web:1@{}", digest('a')),
            "reg.local/cron:7".to_owned(),
        ] {
            let reference = ImageReference::parse(&r).unwrap();
            inventory.images.insert(
                image_key(&reference),
                ImageUse {
                    reference,
                    workloads: BTreeSet::new(),
                    nodes: BTreeSet::new(),
                    pull_failures: BTreeSet::new(),
                    pull_secrets: BTreeSet::new(),
                },
            );
        }
        let copied = [digest('b'), String::new()];
        let missing = [digest('c')];
        let running: BTreeSet<String> = [digest('d')].into();
        let in_use = in_use_digests(&inventory, &copied, &missing, &running);
        assert_eq!(
            in_use,
            [digest('a'), digest('b'), digest('c'), digest('d')].into()
        );
    }
}
