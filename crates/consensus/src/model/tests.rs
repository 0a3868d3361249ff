//! The checks of issue 12: the legacy logic loses acknowledged writes and
//! forms a second cluster; decision 0003 does neither within the bounds.

use super::design::Design0003;
use super::explorer::{Bounds, Report, explore};
use super::legacy::Legacy;
use super::protocol::Protocol;
use super::world::{NO_LOST_COMMIT, NO_LOST_WRITE, ONE_LEADER_PER_TERM, SINGLE_CLUSTER, Scenario, Start, System};

fn check(protocol: &dyn Protocol, scenario: Scenario, bounds: Bounds) -> Report {
    let system = System { protocol, scenario: scenario.clone() };
    let report = explore(&system, bounds);
    eprintln!("{} on {scenario:?}:\n  {}", protocol.name(), report.summary());
    eprintln!("  new states by depth: {:?}", report.levels);
    for violation in &report.violations {
        eprintln!("{violation}");
    }
    report
}

/// Three voters of one cluster, one wipe, one write.
fn amnesia() -> Scenario {
    Scenario {
        nodes: vec![Start::Member, Start::Member, Start::Member],
        expected_size: 3,
        max_term: 2,
        max_log: 3,
        writes: 1,
        crashes: 0,
        wipes: 1,
        tag_changes: 0,
        reconcile: false,
    }
}

/// Three voters of one cluster and a late node with the lowest stable id.
fn late_lowest() -> Scenario {
    Scenario {
        nodes: vec![Start::Late, Start::Member, Start::Member, Start::Member],
        expected_size: 3,
        max_term: 1,
        max_log: 2,
        writes: 0,
        crashes: 0,
        wipes: 0,
        tag_changes: 0,
        reconcile: false,
    }
}

const FIND: Bounds = Bounds { max_states: 5_000_000, max_depth: 40, stop_when_found: None };

#[test]
fn legacy_loses_an_acknowledged_write_after_a_wipe() {
    let bounds = Bounds { stop_when_found: Some(NO_LOST_WRITE), ..FIND };
    let report = check(&Legacy, amnesia(), bounds);
    let found = report.violation(NO_LOST_WRITE).expect("the checker finds the amnesia bug");
    assert!(found.trace.iter().any(|s| s.contains("loses its raft state")), "{found}");
}

#[test]
fn legacy_forms_a_second_cluster() {
    let bounds = Bounds { stop_when_found: Some(SINGLE_CLUSTER), ..FIND };
    let report = check(&Legacy, late_lowest(), bounds);
    let found = report.violation(SINGLE_CLUSTER).expect("the checker finds the second cluster");
    assert!(found.trace.iter().any(|s| s.contains("a decides")), "{found}");
}

#[test]
fn design_0003_keeps_acknowledged_writes_through_a_wipe() {
    let scenario = Scenario { reconcile: true, ..amnesia() };
    let report = check(&Design0003::AS_WRITTEN, scenario, FIND);
    assert!(report.complete, "{}", report.summary());
    assert!(report.violations.is_empty());
    let _ = (ONE_LEADER_PER_TERM, NO_LOST_COMMIT);
}

/// Three fresh nodes, `expected_size` 2 (more than half of three), one tag
/// change.
fn fresh_three() -> Scenario {
    Scenario {
        nodes: vec![Start::Fresh, Start::Fresh, Start::Fresh],
        expected_size: 2,
        max_term: 1,
        max_log: 2,
        writes: 0,
        crashes: 0,
        wipes: 0,
        tag_changes: 1,
        reconcile: false,
    }
}

#[test]
fn design_0003_bootstrap() {
    let report = check(&Design0003::AS_WRITTEN, fresh_three(), FIND);
    assert!(report.violations.is_empty());
}
