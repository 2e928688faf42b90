//! Agency export styles and CSV writing: header spellings, column orders, date, bool and enum spellings, record ids, line tracking.
//!
//! Every agency exports differently, as real ones do, but always within what
//! config/schema.toml declares (a header is a field name or one of its
//! `columns` aliases, any case; an enum value is a value or an alias, any case):
//!
//! | agency    | headers                                  | dates              | other                                  |
//! |-----------|------------------------------------------|--------------------|----------------------------------------|
//! | police    | schema names, `race` alias, `city,zip`   | ISO `2019-03-04`   | bools true/false; arm greenlight/redlight |
//! | jail      | `last_name,first_name,date_of_birth,gender,sid,city,zip_code,booked,released` | `3/4/2019 10:22` | names in capitals; sex MALE/FEMALE |
//! | da        | UPPER CASE, aliases (`CASE_NUMBER`, `FILED`, `ZIP`); the name in one column, `DEFENDANT_NAME` = `FAMILY, GIVEN` | ISO | level F/M; bools Y/N; status aliases (no places) |
//! | casemgmt  | `id,client_id,date,first,last,birthdate,gender,city` (intake: `zip` too) | `3/4/2019` | UTF-8 BOM, CRLF; Yes/No; Title Case; client id `C-0123456` |
//! | treatment | `episode_id,mrn,fname,lname,birth_date,sex,city,zip,admitted,...` | ISO | modality MOUD/IOP/Residential |
//!
//! Line tracking: a record starts on line 2 + the number of line breaks
//! written before it (the header is line 1; a quoted field with a line break
//! shifts later records). The writer counts the line breaks that actually
//! pass through it and fails the export if their count disagrees.

use std::fmt::Write as _;
use std::io::{self, Write};

use super::dates::{civil_from_days, write_date, DateStyle};
use super::model::{
    Agency, Arm, Disposition, Employment, Event, Housing, Kind, Level, Modality, Offense, Race, ReferralType,
    Screening, ServiceType, Sex, Status, What,
};
use super::recording::{DobWritten, RecordedIdentity};

/// One exported record: which true event it records, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Index into `Dataset::events`.
    pub event: u32,
    /// Sequence number within the record's kind and year (the record id's number).
    pub seq: u32,
    /// Minutes after midnight, for agencies that export a clock time.
    pub clock: u16,
    pub identity: RecordedIdentity,
    /// Officer notes or a status reason.
    pub text: Option<Box<str>>,
}

/// All records of one kind, in export order (by date).
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub kind: Kind,
    pub records: Vec<Record>,
}

/// Why a table could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{0}")]
    Csv(#[from] csv::Error),
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("wrote {written} line breaks but the records account for {expected}: truth line numbers would be wrong")]
    Lines { expected: u64, written: u64 },
}

/// What a column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Col {
    Id,
    Given,
    Family,
    /// The whole name in one column, `FAMILY, GIVEN`, as court systems write it.
    FullName,
    Dob,
    Sex,
    StateId,
    City,
    Zip,
    LocalId,
    Date,
    ReferralType,
    Offense,
    Arm,
    Screening,
    Race,
    Text,
    Warrant,
    Violent,
    Felony,
    Release,
    Level,
    Disposition,
    Status,
    Housing,
    Employment,
    Income,
    Minutes,
    Service,
    Modality,
    Discharge,
}

/// Header and content of each column of a kind, in the exporting agency's order.
fn columns(kind: Kind) -> &'static [(&'static str, Col)] {
    match kind {
        Kind::Referral => &[
            ("referral_id", Col::Id),
            ("referral_date", Col::Date),
            ("family_name", Col::Family),
            ("given_name", Col::Given),
            ("dob", Col::Dob),
            ("sex", Col::Sex),
            ("state_id", Col::StateId),
            ("city", Col::City),
            ("zip", Col::Zip),
            ("race", Col::Race),
            ("referral_type", Col::ReferralType),
            ("offense_category", Col::Offense),
            ("arm", Col::Arm),
            ("screening", Col::Screening),
            ("officer_notes", Col::Text),
        ],
        Kind::Arrest => &[
            ("arrest_id", Col::Id),
            ("arrest_date", Col::Date),
            ("family_name", Col::Family),
            ("given_name", Col::Given),
            ("dob", Col::Dob),
            ("sex", Col::Sex),
            ("state_id", Col::StateId),
            ("city", Col::City),
            ("zip", Col::Zip),
            ("warrant", Col::Warrant),
            ("violent", Col::Violent),
            ("felony", Col::Felony),
        ],
        Kind::Booking => &[
            ("booking_number", Col::Id),
            ("last_name", Col::Family),
            ("first_name", Col::Given),
            ("date_of_birth", Col::Dob),
            ("gender", Col::Sex),
            ("sid", Col::StateId),
            ("city", Col::City),
            ("zip_code", Col::Zip),
            ("booked", Col::Date),
            ("released", Col::Release),
        ],
        Kind::Charge => &[
            ("CASE_NUMBER", Col::Id),
            ("DEFENDANT_NAME", Col::FullName),
            ("BIRTH_DATE", Col::Dob),
            ("SEX", Col::Sex),
            ("STATE_ID_NUMBER", Col::StateId),
            ("CITY", Col::City),
            ("ZIP", Col::Zip),
            ("FILED", Col::Date),
            ("LEVEL", Col::Level),
            ("VIOLENT", Col::Violent),
            ("DISPOSITION", Col::Disposition),
        ],
        Kind::ProgramStatus => &[
            ("STATUS_ID", Col::Id),
            ("DEFENDANT_NAME", Col::FullName),
            ("BIRTH_DATE", Col::Dob),
            ("SEX", Col::Sex),
            ("STATE_ID_NUMBER", Col::StateId),
            ("STATUS_DATE", Col::Date),
            ("STATUS", Col::Status),
            ("REASON", Col::Text),
        ],
        Kind::Intake => &[
            ("id", Col::Id),
            ("client_id", Col::LocalId),
            ("date", Col::Date),
            ("first", Col::Given),
            ("last", Col::Family),
            ("birthdate", Col::Dob),
            ("gender", Col::Sex),
            ("state_id", Col::StateId),
            ("city", Col::City),
            ("zip", Col::Zip),
            ("housing", Col::Housing),
            ("employment", Col::Employment),
            ("income_or_benefits", Col::Income),
        ],
        Kind::Plan => &[
            ("id", Col::Id),
            ("client_id", Col::LocalId),
            ("date", Col::Date),
            ("first", Col::Given),
            ("last", Col::Family),
            ("birthdate", Col::Dob),
            ("gender", Col::Sex),
            ("state_id", Col::StateId),
            ("city", Col::City),
        ],
        Kind::Contact => &[
            ("id", Col::Id),
            ("client_id", Col::LocalId),
            ("date", Col::Date),
            ("first", Col::Given),
            ("last", Col::Family),
            ("birthdate", Col::Dob),
            ("gender", Col::Sex),
            ("state_id", Col::StateId),
            ("city", Col::City),
            ("minutes", Col::Minutes),
        ],
        Kind::Service => &[
            ("id", Col::Id),
            ("client_id", Col::LocalId),
            ("date", Col::Date),
            ("first", Col::Given),
            ("last", Col::Family),
            ("birthdate", Col::Dob),
            ("gender", Col::Sex),
            ("state_id", Col::StateId),
            ("city", Col::City),
            ("type", Col::Service),
        ],
        Kind::MonthlyStatus => &[
            ("id", Col::Id),
            ("client_id", Col::LocalId),
            ("month", Col::Date),
            ("first", Col::Given),
            ("last", Col::Family),
            ("birthdate", Col::Dob),
            ("gender", Col::Sex),
            ("state_id", Col::StateId),
            ("city", Col::City),
            ("housing", Col::Housing),
            ("employment", Col::Employment),
            ("income_or_benefits", Col::Income),
        ],
        Kind::Episode => &[
            ("episode_id", Col::Id),
            ("mrn", Col::LocalId),
            ("fname", Col::Given),
            ("lname", Col::Family),
            ("birth_date", Col::Dob),
            ("sex", Col::Sex),
            ("state_id", Col::StateId),
            ("city", Col::City),
            ("zip", Col::Zip),
            ("admitted", Col::Date),
            ("modality", Col::Modality),
            ("discharged", Col::Discharge),
        ],
    }
}

/// The prefix of a kind's record ids: `A2017-000123` is arrest 123 of 2017.
fn id_prefix(kind: Kind) -> &'static str {
    match kind {
        Kind::Referral => "R",
        Kind::Arrest => "A",
        Kind::Booking => "BK",
        Kind::Charge => "CR-",
        Kind::ProgramStatus => "PS-",
        Kind::Intake => "IN",
        Kind::Plan => "PL",
        Kind::Contact => "CT",
        Kind::Service => "SV",
        Kind::MonthlyStatus => "MS",
        Kind::Episode => "TX",
    }
}

/// The header of a kind's export; the state id column only where the agency records state ids.
pub fn header(kind: Kind, with_state_id: bool) -> Vec<&'static str> {
    layout(kind, with_state_id).map(|(h, _)| h).collect()
}

fn layout(kind: Kind, with_state_id: bool) -> impl Iterator<Item = (&'static str, Col)> {
    columns(kind).iter().copied().filter(move |(_, c)| with_state_id || *c != Col::StateId)
}

/// Agencies that export a UTF-8 byte-order mark and CRLF line ends (a Windows case-management system).
fn bom_crlf(agency: Agency) -> bool {
    agency == Agency::Casemgmt
}

fn date_style(agency: Agency) -> (DateStyle, DateStyle) {
    // (event dates, date of birth)
    match agency {
        Agency::Police | Agency::Da | Agency::Treatment => (DateStyle::Iso, DateStyle::Iso),
        Agency::Jail => (DateStyle::UsTime, DateStyle::Us),
        Agency::Casemgmt => (DateStyle::Us, DateStyle::Us),
    }
}

fn spell_bool(agency: Agency, v: bool) -> &'static str {
    match (agency, v) {
        (Agency::Da, true) => "Y",
        (Agency::Da, false) => "N",
        (Agency::Casemgmt, true) => "Yes",
        (Agency::Casemgmt, false) => "No",
        (_, true) => "true",
        (_, false) => "false",
    }
}

fn spell_sex(agency: Agency, sex: Sex) -> &'static str {
    match (agency, sex) {
        (Agency::Jail, Sex::Male) => "MALE",
        (Agency::Jail, Sex::Female) => "FEMALE",
        (Agency::Casemgmt, Sex::Male) => "Male",
        (Agency::Casemgmt, Sex::Female) => "Female",
        (_, s) => s.as_str(),
    }
}

/// Render one record's fields into `fields` (one String per column, reused between records).
fn render(kind: Kind, with_state_id: bool, record: &Record, event: &Event, fields: &mut Vec<String>) {
    let agency = kind.agency();
    let (event_style, dob_style) = date_style(agency);
    let who = &record.identity;
    fields.resize(layout(kind, with_state_id).count(), String::new());
    for (out, (_, col)) in fields.iter_mut().zip(layout(kind, with_state_id)) {
        out.clear();
        // Writing to a String cannot fail, hence the ignored results.
        match (col, &event.what) {
            (Col::Id, _) => {
                let _ = write!(out, "{}{}-{:06}", id_prefix(kind), civil_from_days(event.date).0, record.seq);
            }
            (Col::Given, _) => out.push_str(&who.given),
            (Col::Family, _) => out.push_str(&who.family),
            (Col::FullName, _) if !(who.family.is_empty() && who.given.is_empty()) => {
                let _ = write!(out, "{}, {}", who.family, who.given);
            }
            (Col::FullName, _) => {}
            (Col::Dob, _) => match who.dob_written {
                DobWritten::Date => write_date(out, who.dob, dob_style, 0),
                DobWritten::Missing => {}
                DobWritten::Invalid(text) => out.push_str(text),
            },
            (Col::Sex, _) => out.push_str(who.sex.map_or("", |s| spell_sex(agency, s))),
            (Col::StateId, _) => {
                if let Some(id) = who.state_id {
                    let _ = write!(out, "{id:08}");
                }
            }
            (Col::LocalId, _) => match (who.local_id, agency) {
                (Some(id), Agency::Casemgmt) => {
                    let _ = write!(out, "C-{id:07}");
                }
                (Some(id), _) => {
                    let _ = write!(out, "{id:08}");
                }
                (None, _) => {}
            },
            (Col::City, _) => out.push_str(who.place.city.as_deref().unwrap_or("")),
            (Col::Zip, _) => out.push_str(who.place.zip.as_deref().unwrap_or("")),
            (Col::Date, _) => write_date(out, event.date, event_style, u32::from(record.clock)),
            (Col::Text, _) => out.push_str(record.text.as_deref().unwrap_or("")),
            (Col::ReferralType, What::Referral { referral_type, .. }) => out.push_str(match referral_type {
                ReferralType::Arrest => "arrest",
                ReferralType::SocialContact => "social contact",
            }),
            (Col::Offense, What::Referral { offense, .. }) => out.push_str(match offense {
                Offense::Possession => "drug possession",
                Offense::SexWork => "prostitution",
                o => o.as_str(),
            }),
            (Col::Arm, What::Referral { arm, .. }) => out.push_str(match arm {
                Arm::Diversion => "greenlight",
                Arm::Comparison => "redlight",
            }),
            (Col::Screening, What::Referral { screening, .. }) => out.push_str(screening.map_or("", Screening::as_str)),
            (Col::Race, What::Referral { race, .. }) => out.push_str(match race {
                Race::Black => "Black",
                Race::White => "White",
                Race::Hispanic => "Hispanic",
                Race::Native => "Native",
                Race::Asian => "Asian",
                Race::Other => "Other",
                Race::Unknown => "Unknown",
            }),
            (Col::Warrant, What::Arrest { warrant, .. }) => out.push_str(spell_bool(agency, *warrant)),
            (Col::Violent, What::Arrest { violent, .. } | What::Charge { violent, .. }) => {
                out.push_str(spell_bool(agency, *violent))
            }
            (Col::Felony, What::Arrest { felony, .. }) => out.push_str(spell_bool(agency, *felony)),
            (Col::Release, What::Booking { release: Some(day) }) => {
                // A release clock time later in the day than booking, when it is the same day.
                let clock = (u32::from(record.clock) + 60 + record.seq % 600).min(23 * 60 + 59);
                write_date(out, *day, event_style, clock);
            }
            (Col::Level, What::Charge { level, .. }) => out.push_str(match level {
                Level::Felony => "F",
                Level::Misdemeanor => "M",
            }),
            (Col::Disposition, What::Charge { disposition, .. }) => out.push_str(match disposition {
                Disposition::Pending => "PENDING",
                Disposition::Dismissed => "DISMISSED",
                Disposition::Convicted => "CONVICTED",
                Disposition::Acquitted => "ACQUITTED",
                Disposition::Diverted => "DIVERTED",
            }),
            (Col::Status, What::ProgramStatus { status }) => out.push_str(match status {
                Status::Enrolled => "ENROLLED",
                Status::Ejected => "TERMINATED",
                Status::Completed => "GRADUATED",
            }),
            (Col::Housing, What::Intake { housing, .. } | What::MonthlyStatus { housing, .. }) => {
                out.push_str(match housing {
                    Housing::Street => "Homeless",
                    Housing::Shelter => "Shelter",
                    Housing::Transitional => "Transitional",
                    Housing::Permanent => "Housed",
                })
            }
            (Col::Employment, What::Intake { employment, .. } | What::MonthlyStatus { employment, .. }) => out
                .push_str(match employment {
                    Employment::Unemployed => "None",
                    Employment::Training => "Training",
                    Employment::PartTime => "Part time",
                    Employment::FullTime => "Full time",
                }),
            (Col::Income, What::Intake { income_benefits, .. } | What::MonthlyStatus { income_benefits, .. }) => {
                out.push_str(spell_bool(agency, *income_benefits))
            }
            (Col::Minutes, What::Contact { minutes }) => {
                let _ = write!(out, "{minutes}");
            }
            (Col::Service, What::Service { service }) => out.push_str(match service {
                ServiceType::Housing => "Housing",
                ServiceType::Mat => "MOUD",
                ServiceType::Treatment => "Treatment",
                ServiceType::Transport => "Transport",
                ServiceType::Employment => "Employment",
                ServiceType::Benefits => "Benefits",
                ServiceType::Legal => "Legal",
            }),
            (Col::Modality, What::Episode { modality, .. }) => out.push_str(match modality {
                Modality::Mat => "MOUD",
                Modality::Outpatient => "IOP",
                Modality::Residential => "Residential",
            }),
            (Col::Discharge, What::Episode { discharge: Some(day), .. }) => write_date(out, *day, event_style, 0),
            // No release or discharge date yet; or a column of another kind's event,
            // which cannot happen as a table holds one kind. Left empty.
            _ => {}
        }
    }
}

/// Counts the line breaks that pass through to the inner writer.
struct Counting<W> {
    inner: W,
    newlines: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.newlines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Write `table` as CSV to `out`; `on_record(i, line)` is told the 1-based line where record `i` starts.
pub fn write_table<W: Write>(
    table: &Table,
    events: &[Event],
    with_state_id: bool,
    out: W,
    mut on_record: impl FnMut(usize, u64),
) -> Result<(), ExportError> {
    let agency = table.kind.agency();
    let mut counting = Counting { inner: out, newlines: 0 };
    let mut builder = csv::WriterBuilder::new();
    if bom_crlf(agency) {
        counting.write_all("\u{FEFF}".as_bytes())?;
        builder.terminator(csv::Terminator::CRLF);
    }
    let mut writer = builder.from_writer(counting);
    writer.write_record(header(table.kind, with_state_id))?;
    let mut line: u64 = 2;
    let mut fields = Vec::new();
    for (i, record) in table.records.iter().enumerate() {
        let Some(event) = events.get(record.event as usize) else { continue };
        render(table.kind, with_state_id, record, event, &mut fields);
        writer.write_record(&fields)?;
        on_record(i, line);
        line += 1 + fields.iter().map(|f| f.bytes().filter(|&b| b == b'\n').count() as u64).sum::<u64>();
    }
    let mut counting = writer.into_inner().map_err(|e| ExportError::Io(e.into_error()))?;
    counting.flush()?;
    if counting.newlines != line - 1 {
        return Err(ExportError::Lines { expected: line - 1, written: counting.newlines });
    }
    Ok(())
}
