//! The status matrix: every pin of every environment side by side, one row
//! per template and region, and what needs someone's attention. Pure: the
//! caller reads each environment's pins, drift and fleet, and renders the
//! rows (in a terminal, as JSON, on a page).

use std::collections::{BTreeMap, BTreeSet};

use crate::{Convergence, Digest, FleetCounts, Region, TemplateName};

/// What the drift watcher last said of a pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriftMark {
    /// At its repository's tag.
    Fresh,
    /// Behind its repository's tag.
    Stale,
    /// The check could not be made (registry down, tag missing, no
    /// repository): not fresh.
    Unknown,
    /// The watcher has not checked it (not running, or not yet).
    Unchecked,
}

impl DriftMark {
    /// From a drift entry's `status` (`current`, `stale`, `tag_missing`,
    /// `unpinned`, `error`), or none for a pin the report does not hold.
    pub fn from_status(status: Option<&str>) -> DriftMark {
        match status {
            Some("current") => DriftMark::Fresh,
            Some("stale") => DriftMark::Stale,
            Some(_) => DriftMark::Unknown,
            None => DriftMark::Unchecked,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DriftMark::Fresh => "fresh",
            DriftMark::Stale => "stale",
            DriftMark::Unknown => "unknown",
            DriftMark::Unchecked => "unchecked",
        }
    }
}

/// An age in whole seconds as people read it: `5s`, `3m`, `2h`, `4d`.
pub fn age_text(seconds: i64) -> String {
    let seconds = seconds.max(0);
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m", seconds / 60),
        3600..86_400 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86_400),
    }
}

/// One environment's pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    pub digest: Digest,
    pub drift: DriftMark,
    /// The fleet it governs, when instances report.
    pub fleet: Option<(FleetCounts, Convergence)>,
    pub held: bool,
    /// The canary's digest and share.
    pub canary: Option<(Digest, u8)>,
}

/// What needs attention in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Flag {
    /// Environments pin different digests.
    Disagree,
    /// A pin is behind its repository's tag.
    Stale,
    /// Instances run another digest than the pin's.
    Behind,
    /// A pin is held.
    Held,
    /// A pin has a canary.
    Canary,
    /// An environment could not be read: its cell is unknown, not empty.
    Unreachable,
}

impl Flag {
    pub fn as_str(self) -> &'static str {
        match self {
            Flag::Disagree => "disagree",
            Flag::Stale => "stale",
            Flag::Behind => "behind",
            Flag::Held => "held",
            Flag::Canary => "canary",
            Flag::Unreachable => "unreachable",
        }
    }

    /// Whether the flag fails a status check (exit 1): the pins or the
    /// fleet are not where they should be. Holds and canaries are states
    /// someone chose; an unreachable environment is an error of its own.
    pub fn fails(self) -> bool {
        matches!(self, Flag::Disagree | Flag::Stale | Flag::Behind)
    }
}

/// One environment: its pins, or why they could not be read.
#[derive(Debug, Clone)]
pub enum Column {
    Reached(Vec<(TemplateName, Region, Cell)>),
    Unreachable,
}

/// One template and region across the environments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row<'c> {
    pub template: &'c TemplateName,
    pub region: &'c Region,
    /// Per column, in the columns' order: the pin, or none (no pin, or the
    /// environment could not be read).
    pub cells: Vec<Option<&'c Cell>>,
    /// Per column: the digest a resolve there answers (its own pin, else
    /// its `global` one), or none.
    pub resolves: Vec<Option<&'c Digest>>,
    pub flags: Vec<Flag>,
}

/// The rows, by template then region: every pin any reachable environment
/// has. Each column is indexed once, so the rows cost `pins × log(pins)`
/// whatever the number of environments.
pub fn matrix(columns: &[Column]) -> Vec<Row<'_>> {
    type Index<'c> = BTreeMap<(&'c TemplateName, &'c Region), &'c Cell>;
    let indexes: Vec<Option<Index<'_>>> = columns
        .iter()
        .map(|column| match column {
            Column::Reached(pins) => Some(
                pins.iter()
                    .map(|(template, region, cell)| ((template, region), cell))
                    .collect(),
            ),
            Column::Unreachable => None,
        })
        .collect();
    let keys: BTreeSet<(&TemplateName, &Region)> = indexes
        .iter()
        .flatten()
        .flat_map(|index| index.keys().copied())
        .collect();
    let global = Region::global();
    keys.into_iter()
        .map(|(template, region)| {
            let cells: Vec<Option<&Cell>> = indexes
                .iter()
                .map(|index| index.as_ref()?.get(&(template, region)).copied())
                .collect();
            let resolves: Vec<Option<&Digest>> = indexes
                .iter()
                .zip(&cells)
                .map(|(index, cell)| match (index, cell) {
                    (_, Some(cell)) => Some(&cell.digest),
                    (Some(index), None) => index.get(&(template, &global)).map(|cell| &cell.digest),
                    (None, None) => None,
                })
                .collect();
            let flags = flags(columns, &cells, &resolves);
            Row {
                template,
                region,
                cells,
                resolves,
                flags,
            }
        })
        .collect()
}

fn flags(columns: &[Column], cells: &[Option<&Cell>], resolves: &[Option<&Digest>]) -> Vec<Flag> {
    let present: Vec<&Cell> = cells.iter().flatten().copied().collect();
    let mut flags = BTreeSet::new();
    // Environments disagree when their resolves of this template and region
    // answer different digests (or one answers none), among those reached.
    let answers: BTreeSet<Option<&Digest>> = columns
        .iter()
        .zip(resolves)
        .filter(|(column, _)| matches!(column, Column::Reached(_)))
        .map(|(_, resolved)| *resolved)
        .collect();
    if answers.len() > 1 {
        flags.insert(Flag::Disagree);
    }
    for cell in &present {
        if cell.drift == DriftMark::Stale {
            flags.insert(Flag::Stale);
        }
        if cell.fleet.is_some_and(|(counts, _)| counts.behind > 0) {
            flags.insert(Flag::Behind);
        }
        if cell.held {
            flags.insert(Flag::Held);
        }
        if cell.canary.is_some() {
            flags.insert(Flag::Canary);
        }
    }
    if columns
        .iter()
        .any(|column| matches!(column, Column::Unreachable))
    {
        flags.insert(Flag::Unreachable);
    }
    flags.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(n: u8) -> Cell {
        Cell {
            digest: Digest::from_sha256(&[n; 32]),
            drift: DriftMark::Fresh,
            fleet: None,
            held: false,
            canary: None,
        }
    }

    fn pin(template: &str, region: &str, cell: Cell) -> (TemplateName, Region, Cell) {
        (
            TemplateName::parse(template).unwrap(),
            Region::parse(region).unwrap(),
            cell,
        )
    }

    #[test]
    fn rows_join_environments_and_flag_what_differs() {
        let behind = Cell {
            fleet: Some((
                FleetCounts {
                    current: 3,
                    behind: 1,
                    unknown: 0,
                },
                Convergence::Converging,
            )),
            ..cell(1)
        };
        let staging = Column::Reached(vec![
            pin("codex", "global", cell(2)),
            pin("hermes", "global", cell(5)),
            pin("hermes", "eu", cell(6)),
        ]);
        let prod = Column::Reached(vec![
            pin("codex", "global", behind),
            pin("hermes", "global", cell(5)),
            pin(
                "hermes",
                "eu",
                Cell {
                    drift: DriftMark::Stale,
                    held: true,
                    ..cell(6)
                },
            ),
        ]);
        let columns = [staging, prod];
        let rows = matrix(&columns);
        let summary: Vec<(String, Vec<Flag>)> = rows
            .iter()
            .map(|row| {
                (
                    format!("{}/{}", row.template, row.region),
                    row.flags.clone(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("codex/global".into(), vec![Flag::Disagree, Flag::Behind]),
                ("hermes/eu".into(), vec![Flag::Stale, Flag::Held]),
                ("hermes/global".into(), vec![]),
            ]
        );
        assert!(rows[0].flags.iter().any(|flag| flag.fails()));
        assert!(rows[2].flags.iter().all(|flag| !flag.fails()));
    }

    #[test]
    fn an_unreachable_environment_is_flagged_never_read_as_empty() {
        let columns = [
            Column::Reached(vec![pin("codex", "global", cell(1))]),
            Column::Unreachable,
        ];
        let rows = matrix(&columns);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].cells[1], None);
        // Not "disagree": nothing is known of the other side.
        assert_eq!(rows[0].flags, vec![Flag::Unreachable]);
        // A pin one reached environment lacks disagrees.
        let columns = [
            Column::Reached(vec![pin("codex", "global", cell(1))]),
            Column::Reached(Vec::new()),
        ];
        assert_eq!(matrix(&columns)[0].flags, vec![Flag::Disagree]);
        // A region pin one environment lacks is compared with what its
        // resolve answers there: its `global` pin.
        let columns = [
            Column::Reached(vec![
                pin("codex", "eu", cell(1)),
                pin("codex", "global", cell(2)),
            ]),
            Column::Reached(vec![pin("codex", "global", cell(1))]),
        ];
        let rows = matrix(&columns);
        assert_eq!(rows[0].region.as_str(), "eu");
        assert_eq!(rows[0].cells[1], None);
        assert_eq!(rows[0].resolves[1], Some(&Digest::from_sha256(&[1; 32])));
        assert_eq!(rows[0].flags, vec![]);
        assert_eq!(rows[1].flags, vec![Flag::Disagree]);
        assert_eq!(
            DriftMark::from_status(Some("tag_missing")),
            DriftMark::Unknown
        );
        assert_eq!(DriftMark::from_status(None), DriftMark::Unchecked);
    }
}
