//! A promotion acknowledged with 2xx survives `kill -9` of the server the
//! next instant.

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::support::{Fixture, Server, digest, try_post};

#[test]
fn acknowledged_promotions_survive_kill_9() {
    let fixture = Fixture::new();
    let Fixture {
        env,
        server,
        promote,
        read,
        ..
    } = fixture;
    let mut server = server;
    let acknowledged: Arc<Mutex<Vec<(String, String)>>> = Arc::new(Mutex::new(Vec::new()));
    for round in 0..3u32 {
        let addr = server.addr;
        let writers: Vec<_> = (0..6u32)
            .map(|writer| {
                let acknowledged = acknowledged.clone();
                let token = promote.clone();
                thread::spawn(move || {
                    for i in 0u32.. {
                        let region = format!("r{round}-{writer}-{i}");
                        let d = digest(round * 1_000_000 + writer * 100_000 + i);
                        let body = format!(
                            r#"{{"template_name":"codex","image_digest":"{d}","region":"{region}"}}"#
                        );
                        match try_post(addr, "/cp/admin/runtime-image/promote", &token, &body) {
                            Some(response) if response.status == 201 => {
                                acknowledged.lock().unwrap().push((region, d));
                            }
                            _ => return i,
                        }
                    }
                    unreachable!()
                })
            })
            .collect();
        thread::sleep(Duration::from_millis(700));
        server.kill9();
        let sent: u32 = writers
            .into_iter()
            .map(|writer| writer.join().unwrap())
            .sum();
        assert!(sent > 0, "round {round}: writers made progress");
        server = Server::start(&env.database(), &[]);
        let listed = server
            .get("/cp/admin/runtime-image?template_name=codex", &read)
            .json();
        let pins: std::collections::HashMap<String, String> = listed["pins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|pin| {
                (
                    pin["region"].as_str().unwrap().to_owned(),
                    pin["image_digest"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let acknowledged = acknowledged.lock().unwrap();
        for (region, d) in acknowledged.iter() {
            assert_eq!(
                pins.get(region),
                Some(d),
                "acknowledged promotion to {region} lost"
            );
        }
        eprintln!(
            "round {round}: {} acknowledged promotions all present",
            acknowledged.len()
        );
    }
}
