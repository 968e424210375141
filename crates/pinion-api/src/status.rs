//! From the wire to the status matrix: one environment's pins, drift report
//! and fleet, as its server words them, made into the core's [`Column`].
//! `pinion status` and the page's peer columns both read environments this
//! way.

use std::collections::HashMap;

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
    /// Every pin by template and region, for many lookups.
    pub fn pin_index(&self) -> HashMap<(&str, &str), &Pin> {
        self.pins
            .iter()
            .map(|pin| ((pin.template_name.as_str(), pin.region.as_str()), pin))
            .collect()
    }

    /// The pin of `template` in `region`, as the server sent it.
    pub fn pin(&self, template: &str, region: &str) -> Option<&Pin> {
        self.pins
            .iter()
            .find(|pin| pin.template_name == template && pin.region == region)
    }

    /// The pins as the status matrix takes them. A pin that does not parse
    /// is left out (its server validated it when it was written).
    pub fn cells(&self) -> Vec<(TemplateName, Region, Cell)> {
        let drift: HashMap<(&str, &str), &str> = self
            .drift
            .pins
            .iter()
            .map(|entry| {
                (
                    (entry.template_name.as_str(), entry.region.as_str()),
                    entry.status.as_str(),
                )
            })
            .collect();
        let fleet: HashMap<(&str, &str), &FleetEntry> = self
            .fleet
            .iter()
            .map(|entry| ((entry.template_name.as_str(), entry.region.as_str()), entry))
            .collect();
        self.pins
            .iter()
            .filter_map(|pin| {
                let template = TemplateName::parse(&pin.template_name).ok()?;
                let region = Region::parse(&pin.region).ok()?;
                let digest = Digest::parse(&pin.image_digest).ok()?;
                let key = (pin.template_name.as_str(), pin.region.as_str());
                let drift = drift.get(&key).copied();
                let fleet = fleet.get(&key).and_then(|entry| fleet_of(entry));
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
