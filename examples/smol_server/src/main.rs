//! Runs the smol server; see the library's docs.

use std::time::Duration;

use smol::net::TcpListener;
use switchboard_smol_example::{Keys, auth, serve};

fn main() -> std::io::Result<()> {
    let listen = std::env::var("SWITCHBOARD_LISTEN").unwrap_or_else(|_| "127.0.0.1:8081".into());
    let secret = std::env::var("SWITCHBOARD_JWT_SECRET").ok();
    let dev = secret.is_none();
    let keys = Keys::new(secret.unwrap_or_else(auth::dev_secret).as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    smol::block_on(async {
        let listener = TcpListener::bind(listen.as_str()).await?;
        let addr = listener.local_addr()?;
        println!("switchboard (smol) listening on ws://{addr}");
        if dev {
            for (demo, token) in auth::demo_tokens(&keys, Duration::from_secs(24 * 3600)) {
                println!("  {}/{}: ws://{addr}/?token={token}", demo.tenant, demo.user);
            }
        }
        serve(listener, keys, Duration::from_millis(400)).await
    })
}
