//! From the wire to the status matrix: one environment's pins, drift report
//! and fleet, as its server words them, made into the core's [`Column`].
//! `pinion status` and the page's peer columns both read environments this
//! way.

use pinion_core::status::{Cell, Column, DriftMark};
use pinion_core::{Convergence, Digest, FleetCounts, Region, TemplateName};

use crate::{DriftReport, FleetEntry, Pin};

/// What one server says of its pins.
#[derive(Debug, Clone)]
pub struct Environment {
    pub pins: Vec<Pin>,
    pub drift: DriftReport,
    pub fleet: Vec<FleetEntry>,
}

impl Environment {
    /// The pin of `template` in `region`, as the server sent it.
    pub fn pin(&self, template: &str, region: &str) -> Option<&Pin> {
        self.pins
            .iter()
            .find(|pin| pin.template_name == template && pin.region == region)
    }

    /// The pins as the status matrix takes them. A pin that does not parse
    /// is left out (its server validated it when it was written).
    pub fn cells(&self) -> Vec<(TemplateName, Region, Cell)> {
        self.pins
            .iter()
            .filter_map(|pin| {
                let template = TemplateName::parse(&pin.template_name).ok()?;
                let region = Region::parse(&pin.region).ok()?;
                let digest = Digest::parse(&pin.image_digest).ok()?;
                let drift = self
                    .drift
                    .pins
                    .iter()
                    .find(|entry| {
                        entry.template_name == pin.template_name && entry.region == pin.region
                    })
                    .map(|entry| entry.status.as_str());
                let fleet = self
                    .fleet
                    .iter()
                    .find(|entry| {
                        entry.template_name == pin.template_name && entry.region == pin.region
                    })
                    .and_then(fleet_of);
                let canary = pin.canary.as_ref().and_then(|canary| {
                    Some((Digest::parse(&canary.image_digest).ok()?, canary.percent))
                });
                let cell = Cell {
                    digest,
                    drift: DriftMark::from_status(drift),
                    fleet,
                    held: pin.hold.is_some(),
                    canary,
                };
                Some((template, region, cell))
            })
            .collect()
    }

    /// The environment as one column of the matrix.
    pub fn column(&self) -> Column {
        Column::Reached(self.cells())
    }
}

/// A fleet entry's counts and state; none for a pin no instance reports
/// under.
pub fn fleet_of(entry: &FleetEntry) -> Option<(FleetCounts, Convergence)> {
    let state = match entry.state.as_str() {
        "converged" => Convergence::Converged,
        "converging" => Convergence::Converging,
        "stalled" => Convergence::Stalled,
        _ => return None,
    };
    let counts = FleetCounts {
        current: entry.current,
        behind: entry.behind,
        unknown: entry.unknown,
    };
    Some((counts, state))
}
