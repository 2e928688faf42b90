//! `divert ca`: the program's certificate authority (init, issue, revoke, crl, list).

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use serde::Serialize;
use time::OffsetDateTime;

use crate::pki::{self, Member, Role};

/// Arguments of `divert ca`.
#[derive(Debug, clap::Args)]
// The `Ca` variant's doc comment in cli.rs sets about/long_about after these
// attributes are applied, so the explanation and example go in after_help,
// which it leaves alone (and which shows with both -h and --help).
#[command(after_help = "One CA per program signs a certificate for every daemon and evaluator, carrying \
the identity spiffe://<program>/<role>/<name>. Keep the CA directory on an admin machine; hand out only \
the issued directories. See `divert ca <COMMAND> --help` for each step.

Example, a whole program (run as the admin, on the CA machine):
  divert ca init --program santa-fe-lead --dir ca
  divert ca issue --ca ca --role steward --name broker --dns steward.example.org --out steward
  divert ca issue --ca ca --role source --name police --dns police.example.org --out police
  divert ca issue --ca ca --role evaluator --name unm --out unm
  divert ca list --ca ca
  divert ca revoke --ca ca --name unm
  divert ca crl --ca ca        # from cron, daily: a stale CRL locks everyone out")]
pub struct CaArgs {
    #[command(subcommand)]
    pub command: CaCommand,
}

/// The `divert ca` subcommands.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a new CA (key, self-signed certificate, register, empty CRL) for a program.
    #[command(long_about = "Create a new CA for a program: an ECDSA P-256 key (DIR/ca.key, 0600), a self-signed \
CA certificate (DIR/ca.pem), the bookkeeping (DIR/ca.toml), an empty register of issued certificates \
(DIR/members.json) and an empty CRL (DIR/crl.pem). Refuses a directory that already holds a CA.

Example:
  divert ca init --program santa-fe-lead --dir /etc/divert/ca")]
    Init(InitArgs),
    /// Issue a key and certificate for a source, the steward or an evaluator.
    #[command(long_about = "Issue a new P-256 key and a certificate signed by the CA, with the identity \
spiffe://<program>/<role>/<name>. Writes OUTDIR/cert.pem, OUTDIR/key.pem (0600), OUTDIR/ca.pem (the CA \
certificate, to trust) and OUTDIR/crl.pem (the current CRL). Issuing again into the same OUTDIR replaces \
the files atomically: that is how certificates are rotated (revoke the old serial afterwards if it must \
stop working at once). Sources and the steward also serve TLS, so they get DNS/IP names; with none \
given they get localhost and 127.0.0.1.

Example:
  divert ca issue --ca ca --role source --name police --dns police.example.org --out police
  divert ca issue --ca ca --role evaluator --name unm --days 90 --out unm")]
    Issue(IssueArgs),
    /// Revoke the certificates of a member and rewrite the CRL.
    #[command(long_about = "Revoke every unrevoked certificate of NAME (narrowed with --role or --serial) and \
rewrite DIR/crl.pem. Copy the new crl.pem to every daemon (the steward and the sources): they reload it \
without restart and refuse the revoked certificates from then on.

Example:
  divert ca revoke --ca /etc/divert/ca --name unm
  divert ca revoke --ca /etc/divert/ca --name police --serial 3f1c...")]
    Revoke(RevokeArgs),
    /// Re-issue the CRL with a fresh next-update date (run from cron).
    #[command(long_about = "Re-issue DIR/crl.pem with the same revocations, a new CRL number and a fresh \
next-update date. A CRL past its next update makes the steward refuse everyone, so run this from cron \
well before it (the default validity is 7 days; daily is a good rhythm) and copy crl.pem out.

Example (crontab):
  17 3 * * * divert ca crl --ca /etc/divert/ca && cp /etc/divert/ca/crl.pem /etc/divert/steward/")]
    Crl(CrlArgs),
    /// List issued certificates: role, name, serial, expiry, revoked.
    #[command(long_about = "List every certificate the CA has issued, with role, name, serial, expiry, days \
left and status (valid, expired or revoked).

Example:
  divert ca list --ca /etc/divert/ca
  divert ca list --ca /etc/divert/ca --json | jq '.[] | select(.status == \"valid\")'")]
    List(ListArgs),
}

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Program name, the SPIFFE trust domain of every identity: lowercase a-z, 0-9, '.', '-', '_', 1 to 63 characters.
    #[arg(long, value_name = "NAME")]
    pub program: String,
    /// Directory to create the CA in (created 0700 if missing; must not already hold a CA).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// Validity of the CA certificate in days (1 to 7300); every issued certificate must expire before it.
    #[arg(long, default_value_t = pki::DEFAULT_CA_DAYS, value_name = "N")]
    pub days: u32,
}

#[derive(Debug, clap::Args)]
pub struct IssueArgs {
    /// The CA directory made by `divert ca init`.
    #[arg(long = "ca", value_name = "DIR")]
    pub ca: PathBuf,
    /// Role of the holder: source (an agency's daemon), steward (the linking daemon) or evaluator (a query client).
    #[arg(long, value_name = "ROLE", value_parser = role_parser())]
    pub role: Role,
    /// Name of the holder within its role, e.g. police, jail, da: lowercase a-z, 0-9, '-', '_', 1 to 63 characters.
    #[arg(long, value_name = "NAME")]
    pub name: String,
    /// Directory to write cert.pem, key.pem, ca.pem and crl.pem into (created 0700 if missing).
    #[arg(long, value_name = "OUTDIR")]
    pub out: PathBuf,
    /// Validity of the certificate in days (1 to 825).
    #[arg(long, default_value_t = pki::DEFAULT_CERT_DAYS, value_name = "N")]
    pub days: u32,
    /// DNS name the holder serves under (repeatable); sources and the steward default to localhost.
    #[arg(long = "dns", value_name = "NAME")]
    pub dns: Vec<String>,
    /// IP address the holder serves under (repeatable); sources and the steward default to 127.0.0.1.
    #[arg(long = "ip", value_name = "ADDR")]
    pub ip: Vec<IpAddr>,
}

#[derive(Debug, clap::Args)]
pub struct RevokeArgs {
    /// The CA directory made by `divert ca init`.
    #[arg(long = "ca", value_name = "DIR")]
    pub ca: PathBuf,
    /// Name whose certificates to revoke (all roles, all unrevoked serials, unless narrowed).
    #[arg(long, value_name = "NAME")]
    pub name: String,
    /// Revoke only certificates of this role: source, steward or evaluator.
    #[arg(long, value_name = "ROLE", value_parser = role_parser())]
    pub role: Option<Role>,
    /// Revoke only the certificate with this serial (hex, as `divert ca list` shows it; colons allowed).
    #[arg(long, value_name = "HEX")]
    pub serial: Option<String>,
    /// Validity of the new CRL in days (1 to 365); default from ca.toml (7).
    #[arg(long, value_name = "N")]
    pub crl_days: Option<u32>,
}

#[derive(Debug, clap::Args)]
pub struct CrlArgs {
    /// The CA directory made by `divert ca init`.
    #[arg(long = "ca", value_name = "DIR")]
    pub ca: PathBuf,
    /// Validity of the new CRL in days (1 to 365); default from ca.toml (7).
    #[arg(long, value_name = "N")]
    pub crl_days: Option<u32>,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// The CA directory made by `divert ca init`.
    #[arg(long = "ca", value_name = "DIR")]
    pub ca: PathBuf,
    /// Print a JSON array instead of a table (for scripts and monitoring).
    #[arg(long)]
    pub json: bool,
}

/// Parse a role, listing the possible values in `--help` and in the error.
fn role_parser() -> impl clap::builder::TypedValueParser<Value = Role> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(Role::ALL.map(Role::as_str)).try_map(|s| s.parse::<Role>())
}

/// Run `divert ca`.
pub fn run(args: CaArgs) -> anyhow::Result<()> {
    match args.command {
        CaCommand::Init(a) => init(a),
        CaCommand::Issue(a) => issue(a),
        CaCommand::Revoke(a) => revoke(a),
        CaCommand::Crl(a) => crl(a),
        CaCommand::List(a) => list(a),
    }
}

fn date(t: OffsetDateTime) -> String {
    let d = t.date();
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

fn init(a: InitArgs) -> anyhow::Result<()> {
    pki::init_ca(&a.dir, &a.program, a.days)?;
    let d = a.dir.display();
    println!("created the CA of program {} in {d}", a.program);
    println!("  {d}/{}  CA certificate: give it to every daemon and evaluator to trust", pki::CA_CERT_FILE);
    println!("  {d}/{}  CA private key (0600): keep it here, back it up offline", pki::CA_KEY_FILE);
    println!("  {d}/{}  current CRL: run `divert ca crl --ca {d}` before it expires", pki::CRL_FILE);
    println!("next: divert ca issue --ca {d} --role steward --name NAME --out DIR");
    Ok(())
}

fn issue(a: IssueArgs) -> anyhow::Result<()> {
    let issued = pki::issue(&a.ca, a.role, &a.name, &a.out, a.days, &a.dns, &a.ip)?;
    if issued.default_sans {
        eprintln!(
            "divert: note: no --dns/--ip given; the {} certificate serves as DNS localhost and IP 127.0.0.1 only \
             (pass --dns/--ip for the names other machines use to reach it)",
            a.role
        );
    }
    let m = &issued.member;
    let verb = if issued.replaced { "rotated" } else { "issued" };
    println!("{verb} {} (serial {}, valid until {})", m.spiffe_id, m.serial, crate::days::format_time(m.not_after));
    if !issued.dns.is_empty() || !issued.ips.is_empty() {
        let names: Vec<String> = issued
            .dns
            .iter()
            .map(|d| format!("DNS:{d}"))
            .chain(issued.ips.iter().map(|ip| format!("IP:{ip}")))
            .collect();
        println!("  serves as {}", names.join(", "));
    }
    println!("  {}  certificate", issued.cert_path.display());
    println!("  {}  private key (0600)", issued.key_path.display());
    println!("  {}  CA certificate (trust anchor)", issued.ca_path.display());
    println!("  {}  current CRL", issued.crl_path.display());
    Ok(())
}

fn crl_days(ca: &std::path::Path, given: Option<u32>) -> anyhow::Result<u32> {
    match given {
        Some(d) => Ok(d),
        None => Ok(pki::ca_config(ca)?.crl_days),
    }
}

fn revoke(a: RevokeArgs) -> anyhow::Result<()> {
    let days = crl_days(&a.ca, a.crl_days)?;
    let revoked = pki::revoke(&a.ca, &a.name, a.role, a.serial.as_deref(), days)?;
    for m in &revoked {
        println!("revoked {} (serial {})", m.spiffe_id, m.serial);
    }
    println!(
        "wrote {}; copy it to every daemon (the steward and the sources); valid for {days} days",
        a.ca.join(pki::CRL_FILE).display()
    );
    Ok(())
}

fn crl(a: CrlArgs) -> anyhow::Result<()> {
    let days = crl_days(&a.ca, a.crl_days)?;
    pki::refresh_crl(&a.ca, days)?;
    let config = pki::ca_config(&a.ca)?;
    println!(
        "wrote {} (CRL number {}), valid for {days} days; copy it to every daemon",
        a.ca.join(pki::CRL_FILE).display(),
        config.crl_number
    );
    Ok(())
}

/// One row of `divert ca list`.
#[derive(Debug, Serialize)]
struct Row<'a> {
    #[serde(flatten)]
    member: &'a Member,
    /// Whole days until expiry; negative once expired.
    days_left: i64,
    /// valid, expired or revoked.
    status: &'static str,
}

fn list(a: ListArgs) -> anyhow::Result<()> {
    let mut members = pki::members(&a.ca)?;
    members.sort_by(|x, y| (x.role, &x.name, x.not_before).cmp(&(y.role, &y.name, y.not_before)));
    let now = OffsetDateTime::now_utc();
    let rows: Vec<Row> = members
        .iter()
        .map(|m| {
            let days_left = (m.not_after - now).whole_days();
            let status = if m.is_revoked() {
                "revoked"
            } else if m.not_after <= now {
                "expired"
            } else {
                "valid"
            };
            Row { member: m, days_left, status }
        })
        .collect();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows).context("encoding the list as JSON")?);
        return Ok(());
    }
    if rows.is_empty() {
        println!("no certificates issued yet; see `divert ca issue --help`");
        return Ok(());
    }
    println!("{:<9}  {:<20}  {:<32}  {:<10}  {:>9}  STATUS", "ROLE", "NAME", "SERIAL", "NOT_AFTER", "DAYS_LEFT");
    for r in &rows {
        let status = match r.member.revoked_at {
            Some(at) => format!("revoked {}", date(at)),
            None => r.status.to_string(),
        };
        println!(
            "{:<9}  {:<20}  {:<32}  {:<10}  {:>9}  {status}",
            r.member.role.as_str(),
            r.member.name,
            r.member.serial,
            date(r.member.not_after),
            r.days_left,
        );
    }
    Ok(())
}
