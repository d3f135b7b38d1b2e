//! `ringfs admin`: certificates (offline) and users.

use std::io::Write;

use anyhow::{anyhow, bail, Result};
use ringfs_client::{ControlClient, Credential};
use serde_json::json;

use crate::args::{CertCmd, UserCmd};
use crate::read_secret;

/// Runs `ringfs admin cert` (offline).
pub(crate) fn cert_cmd(cmd: &CertCmd, json: bool) -> Result<()> {
    use ringfs_ops::tls::certs;
    match cmd {
        CertCmd::Ca { dir } => {
            let ca = certs::create_ca(dir)?;
            if json {
                outln!("{}", json!({"ca": ca, "key": dir.join(certs::CA_KEY)}));
            } else {
                outln!(
                    "cluster CA created: {} (trust it everywhere), {} (mode 0600: keep it safe)",
                    ca.display(),
                    dir.join(certs::CA_KEY).display()
                );
            }
        }
        CertCmd::Issue {
            name,
            ca_dir,
            host,
            days,
            out,
        } => {
            let role = if host.is_empty() {
                certs::Role::Client
            } else {
                certs::Role::Server
            };
            let f = certs::issue(ca_dir, name, role, host, *days, out)?;
            if json {
                outln!("{}", json!({"ca": f.ca, "cert": f.cert, "key": f.key}));
            } else {
                outln!(
                    "{} certificate {name} issued: --tls-ca {} --tls-cert {} --tls-key {}",
                    if role == certs::Role::Server {
                        "server"
                    } else {
                        "client"
                    },
                    f.ca.display(),
                    f.cert.display(),
                    f.key.display()
                );
            }
        }
    }
    Ok(())
}

/// `admin user ...`.
pub(crate) async fn cmd_user(
    ctl: &ControlClient,
    json: bool,
    secret_file: Option<&std::path::Path>,
    cmd: UserCmd,
) -> Result<()> {
    match cmd {
        UserCmd::Add {
            name,
            uid,
            groups,
            admin,
            out,
        } => {
            let secret_file = secret_file.ok_or_else(|| {
                anyhow!(
                    "user add derives the user's key from the cluster secret: pass --secret-file"
                )
            })?;
            let secret = read_secret(secret_file)?;
            let out = out.unwrap_or_else(|| format!("{name}.credential").into());
            if out.exists() {
                bail!("{} exists: not overwriting a credential", out.display());
            }
            let u = ctl
                .add_user(&name, uid.unwrap_or(0), &groups, admin)
                .await?;
            let cred = Credential::derive(&secret, &u.name, &u.salt);
            if let Err(e) = cred.save(&out) {
                // No credential file: undo, so that the name can be added again.
                let _ = ctl.remove_user(&u.name).await;
                return Err(e.into());
            }
            if json {
                outln!(
                    "{}",
                    json!({"name": u.name, "uid": u.uid, "gids": u.gids, "admin": u.admin,
                           "credential": out})
                );
            } else {
                outln!(
                    "user {} (uid {}, groups {:?}) added; credential in {} (mode 0600)",
                    u.name,
                    u.uid,
                    u.gids,
                    out.display()
                );
            }
        }
        UserCmd::List => {
            let users = ctl.list_users().await?;
            if json {
                let v: Vec<_> = users
                    .iter()
                    .map(
                        |u| json!({"name": u.name, "uid": u.uid, "gids": u.gids, "admin": u.admin}),
                    )
                    .collect();
                outln!("{}", serde_json::Value::Array(v));
            } else {
                for u in users {
                    let groups: Vec<String> = u.gids.iter().map(u32::to_string).collect();
                    outln!(
                        "{} uid={} groups={}{}",
                        u.name,
                        u.uid,
                        groups.join(","),
                        if u.admin { " admin" } else { "" }
                    );
                }
            }
        }
        UserCmd::Remove { name } => ctl.remove_user(&name).await?,
    }
    Ok(())
}
