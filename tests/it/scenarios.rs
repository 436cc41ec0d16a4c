//! The seed workflows as executable scenarios (`tests/scenarios/*.yaml`), run
//! through the public interfaces against a real gateway on the demo
//! configuration, with mock MCP/ECM endpoints on loopback.

use std::collections::HashMap;

use cws_gateway::config::Config;
use cwsgw_scenario::mock::MockEndpoint;
use cwsgw_scenario::run::{self as scenario, RunLog, Scenario, Target};
use sha2::{Digest, Sha256};

use crate::common::repo;

async fn run_file(name: &str) {
    let path = repo().join("tests/scenarios").join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    let scenario = Scenario::from_yaml(&text, name).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = scenario.config.as_deref().unwrap_or("config/demo.toml");
    let mut cfg = Config::from_file(&repo().join(config)).unwrap();
    cfg.server.http_addr = "127.0.0.1:0".into();
    cfg.server.mllp_addr = "127.0.0.1:0".into();
    cfg.store.url = format!("sqlite://{}", dir.path().join("gw.db").display());
    cfg.mappings.dir = Some(repo().join("mappings"));
    // One mock per endpoint, on a free port; the config points at it.
    let mut mocks = HashMap::new();
    for o in cfg.organizations.iter_mut() {
        if o.endpoint.is_some() {
            let m = MockEndpoint::start().await.unwrap();
            o.endpoint = Some(format!(
                "{}/fhir",
                m.base_url().trim_end_matches('/').trim_end_matches("/fhir")
            ));
            mocks.insert(o.id.clone(), m);
        }
    }
    cfg.delivery.initial_backoff_ms = 50;
    cfg.delivery.max_backoff_ms = 500;
    cfg.validate().unwrap();
    // A fresh token per configured client, so every organization can act.
    let mut tokens = HashMap::new();
    for c in cfg.clients.iter_mut() {
        if c.token_sha256.is_some() && !tokens.contains_key(&c.organization) {
            let token = format!("scenario-token-{}", c.id);
            c.token_sha256 = Some(hex::encode(Sha256::digest(token.as_bytes())));
            tokens.insert(c.organization.clone(), token);
        }
    }
    let gw = cws_gateway::serve::start(cfg).await.unwrap();
    let target = Target {
        http: gw.http_addr,
        mllp: gw.mllp_addr,
        tokens,
        mocks,
    };
    let mut log = RunLog::default();
    let result = scenario::run(&scenario, &target, &mut log).await;
    gw.stop().await;
    if let Err(e) = result {
        panic!("{e:#}\nsteps done:\n{}", log.lines.join("\n"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_traffic() {
    run_file("demo.yaml").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_removal_case() {
    run_file("new-removal-case.yaml").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn andrea_psychiatric_admission() {
    run_file("andrea-psychiatric-admission.yaml").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prevention_pathway() {
    run_file("prevention-pathway.yaml").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_closure() {
    run_file("case-closure.yaml").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_case() {
    run_file("existing-case.yaml").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn family_maintenance() {
    run_file("family-maintenance.yaml").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_county_placement() {
    run_file("out-of-county-placement.yaml").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sam_ccs_pof7() {
    run_file("sam-ccs-pof7.yaml").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monthly_rtf() {
    run_file("monthly-rtf.yaml").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecm_care_team_and_assessment() {
    run_file("ecm-care-team-and-assessment.yaml").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clr_compliance_view() {
    run_file("clr-compliance-view.yaml").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hospital_community_referral() {
    run_file("hospital-community-referral.yaml").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preferred_provider_referral() {
    run_file("preferred-provider-referral.yaml").await;
}

/// Every scenario file has a test above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clr_denial_with_notice_of_action() {
    run_file("clr-denial-with-notice-of-action.yaml").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clr_provider_change() {
    run_file("clr-provider-change.yaml").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clr_discontinuation_with_reason() {
    run_file("clr-discontinuation-with-reason.yaml").await;
}

#[test]
fn every_scenario_file_is_run() {
    let this = std::fs::read_to_string(repo().join("tests/it/scenarios.rs")).unwrap();
    for entry in std::fs::read_dir(repo().join("tests/scenarios")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().to_string();
        if name.ends_with(".yaml") {
            assert!(
                this.contains(&format!("run_file(\"{name}\")")),
                "{name} has no test"
            );
        }
    }
}
