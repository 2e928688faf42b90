//! The event model: synthetic persons and their true (error-free) events, arm effects included.
//!
//! One referred person's life in the data, day 0 being the referral date:
//! arrests from a personal Poisson rate (gamma distributed across persons),
//! lowered after referral for enrolled diversion persons; bookings and DA
//! charges following arrests; for the diversion arm the referral funnel,
//! intake, plan, case-management contacts and services, monthly status and
//! program status; treatment episodes for anyone. Background persons are
//! never referred and only have arrests, bookings, charges and treatment.
//!
//! The index contact of an arrest referral is the referral record itself, not
//! an arrest record: arrest records are new arrests. Comparison-arm arrest
//! referrals are booked and charged as usual on day 0; diversion-arm ones are
//! not (that is the diversion).

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::dates::{first_of_month_after, Day};
use super::dist::{chance, exponential, gamma, normal, stream, Categorical, Permutation};
use super::names::{NameTables, Suffix};
use super::params::Params;
use super::places::{Places, Residence};

/// Random-stream domain of residences (`dist::stream`; persons and records use 1 and 2, record places 4).
pub const RESIDENCES: u64 = 3;

/// Days per year and per month used to turn annual and monthly rates into daily ones.
const YEAR_DAYS: f64 = 365.25;
const MONTH_DAYS: f64 = YEAR_DAYS / 12.0;
/// The first outcome window after referral: days 0..=181.
pub const SIX_MONTHS: i32 = 182;

macro_rules! named_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name { $($variant),+ }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// The canonical value, as config/schema.toml spells it.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
            /// Position in `ALL`.
            pub fn index(self) -> usize {
                self as usize
            }
        }
    };
}

named_enum!(
    /// The agency that exports a record kind.
    Agency { Police = "police", Jail = "jail", Da = "da", Casemgmt = "casemgmt", Treatment = "treatment" }
);
named_enum!(
    /// A record kind of config/schema.toml.
    Kind {
        Referral = "referral", Arrest = "arrest", Booking = "booking", Charge = "charge",
        ProgramStatus = "program_status", Intake = "intake", Plan = "plan", Contact = "contact",
        Service = "service", MonthlyStatus = "monthly_status", Episode = "episode",
    }
);
named_enum!(Sex { Female = "F", Male = "M", X = "X" });
named_enum!(Race {
    Black = "black", White = "white", Hispanic = "hispanic", Native = "native", Asian = "asian",
    Other = "other", Unknown = "unknown",
});
named_enum!(Arm { Diversion = "diversion", Comparison = "comparison" });
named_enum!(ReferralType { Arrest = "arrest", SocialContact = "social_contact" });
named_enum!(Offense { Possession = "possession", SmallSale = "small_sale", SexWork = "sex_work", Other = "other" });
named_enum!(Screening { Eligible = "eligible", Ineligible = "ineligible", Declined = "declined" });
named_enum!(Level { Felony = "felony", Misdemeanor = "misdemeanor" });
named_enum!(Disposition {
    Pending = "pending", Dismissed = "dismissed", Convicted = "convicted", Acquitted = "acquitted",
    Diverted = "diverted",
});
named_enum!(Status { Enrolled = "enrolled", Ejected = "ejected", Completed = "completed" });
named_enum!(Housing { Street = "street", Shelter = "shelter", Transitional = "transitional", Permanent = "permanent" });
named_enum!(Employment { Unemployed = "unemployed", Training = "training", PartTime = "part_time", FullTime = "full_time" });
named_enum!(ServiceType {
    Housing = "housing", Mat = "mat", Treatment = "treatment", Transport = "transport",
    Employment = "employment", Benefits = "benefits", Legal = "legal",
});
named_enum!(Modality { Mat = "mat", Outpatient = "outpatient", Residential = "residential" });

impl Kind {
    pub fn agency(self) -> Agency {
        match self {
            Kind::Referral | Kind::Arrest => Agency::Police,
            Kind::Booking => Agency::Jail,
            Kind::Charge | Kind::ProgramStatus => Agency::Da,
            Kind::Intake | Kind::Plan | Kind::Contact | Kind::Service | Kind::MonthlyStatus => Agency::Casemgmt,
            Kind::Episode => Agency::Treatment,
        }
    }
}

impl Housing {
    /// Not on the street: shelter, transitional or permanent housing.
    pub fn sheltered(self) -> bool {
        self != Housing::Street
    }
}

impl Employment {
    /// Working part or full time.
    pub fn employed(self) -> bool {
        matches!(self, Employment::PartTime | Employment::FullTime)
    }
}

/// A synthetic person: the true identity every agency record of them derives from.
#[derive(Debug, Clone, PartialEq)]
pub struct Person {
    /// Canonical given name (William, never Bill).
    pub given: &'static str,
    pub family: &'static str,
    /// Second part of a hyphenated double family name (García-López).
    pub second_family: Option<&'static str>,
    pub suffix: Option<Suffix>,
    pub dob: Day,
    pub sex: Sex,
    pub race: Race,
    /// 8 digits, unique per person.
    pub state_id: u32,
    /// Where the person usually lives (no ZIP code: no fixed address).
    pub residence: Residence,
    pub referred: bool,
}

impl Person {
    /// The synthetic person id of the person at `index` in `Dataset::persons`: `P000001` for index 0.
    pub fn entity_id(index: u32) -> String {
        format!("P{:06}", u64::from(index) + 1)
    }
}

/// A true event of one person, as it happened.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Index into `Dataset::persons`.
    pub person: u32,
    pub date: Day,
    pub what: What,
}

/// What happened, with the fields its record carries.
#[derive(Debug, Clone, PartialEq)]
pub enum What {
    /// `screening` is `None` for comparison-arm persons (never offered the program) and re-referrals.
    Referral {
        arm: Arm,
        referral_type: ReferralType,
        offense: Offense,
        screening: Option<Screening>,
        race: Race,
    },
    Arrest {
        warrant: bool,
        violent: bool,
        felony: bool,
    },
    /// `release` is `None` while still in custody when the exports end.
    Booking {
        release: Option<Day>,
    },
    Charge {
        level: Level,
        violent: bool,
        disposition: Disposition,
    },
    ProgramStatus {
        status: Status,
    },
    Intake {
        housing: Housing,
        employment: Employment,
        income_benefits: bool,
    },
    Plan,
    Contact {
        minutes: u16,
    },
    Service {
        service: ServiceType,
    },
    /// Dated the first day of the month it describes.
    MonthlyStatus {
        housing: Housing,
        employment: Employment,
        income_benefits: bool,
    },
    Episode {
        modality: Modality,
        discharge: Option<Day>,
    },
}

impl What {
    pub fn kind(&self) -> Kind {
        match self {
            What::Referral { .. } => Kind::Referral,
            What::Arrest { .. } => Kind::Arrest,
            What::Booking { .. } => Kind::Booking,
            What::Charge { .. } => Kind::Charge,
            What::ProgramStatus { .. } => Kind::ProgramStatus,
            What::Intake { .. } => Kind::Intake,
            What::Plan => Kind::Plan,
            What::Contact { .. } => Kind::Contact,
            What::Service { .. } => Kind::Service,
            What::MonthlyStatus { .. } => Kind::MonthlyStatus,
            What::Episode { .. } => Kind::Episode,
        }
    }
}

/// Everything person simulation needs that does not change between persons.
pub struct World<'a> {
    pub params: &'a Params,
    pub names: NameTables,
    pub places: Places,
    /// The seed: residences are drawn from their own streams of it.
    seed: u64,
    /// First and last referral day.
    pub period: (Day, Day),
    /// Last day of the exports: nothing later is recorded.
    pub export_end: Day,
    /// Rate multiplier for enrolled diversion persons in days 0..=181 (see `solve_rate_ratio_6m`).
    pub rate_ratio_6m: f64,
    state_ids: Permutation,
    /// Agencies' own person numbers (case management's client id, treatment's MRN).
    local_ids: Permutation,
    race: Categorical,
    offense: Categorical,
    disposition: Categorical,
    service: Categorical,
    modality: Categorical,
}

impl<'a> World<'a> {
    pub fn new(params: &'a Params, seed: u64) -> World<'a> {
        let period = params.period();
        let r = &params.demographics.race;
        let o = &params.referral.offense;
        let d = &params.charges.disposition;
        let s = &params.casemgmt.service_types;
        let m = &params.treatment.modality;
        World {
            params,
            names: NameTables::default(),
            places: Places::default(),
            seed,
            period,
            export_end: period.1 + params.program.days_after as i32,
            rate_ratio_6m: solve_rate_ratio_6m(params),
            state_ids: Permutation::new(90_000_000, seed),
            // Room for 90 million persons' two numbers at five agencies, none shared by two persons.
            local_ids: Permutation::new(900_000_000, seed ^ 0x10CA1),
            race: Categorical::new(&[r.black, r.white, r.hispanic, r.native, r.asian, r.other, r.unknown]),
            offense: Categorical::new(&[o.possession, o.small_sale, o.sex_work, o.other]),
            disposition: Categorical::new(&[d.pending, d.dismissed, d.convicted, d.acquitted, d.diverted]),
            service: Categorical::new(&[s.housing, s.mat, s.treatment, s.transport, s.employment, s.benefits, s.legal]),
            modality: Categorical::new(&[m.mat, m.outpatient, m.residential]),
        }
    }

    /// The person number agency `agency` gave person `index`; `second` is a
    /// duplicate registration of the same person. Agencies number
    /// independently, so two agencies' numbers can coincide.
    pub fn local_id(&self, index: u32, agency: Agency, second: bool) -> u32 {
        let x = (u64::from(index) * 2 + u64::from(second)) * 5 + agency.index() as u64;
        1_000_000 + self.local_ids.apply(x) as u32
    }

    /// Simulate person `index` and append their events to `out`.
    pub fn person(&self, rng: &mut ChaCha8Rng, index: u32, referred: bool, out: &mut Vec<Event>) -> Person {
        let p = self.params;
        let anchor = rng.gen_range(self.period.0..=self.period.1);
        let person = self.identity(rng, index, anchor, referred);
        let from = anchor - p.program.days_before as i32;
        let to = (anchor + p.program.days_after as i32).min(self.export_end);
        let mut sim = Sim { world: self, rng, person: index, out, to };
        let lambda = gamma(sim.rng, p.arrests.rate_shape, p.arrests.rate_mean) / YEAR_DAYS;
        if !referred {
            sim.arrests(from, to + 1, lambda, None);
            sim.treatment(from, to, None);
            return person;
        }
        sim.referral(anchor, person.race, lambda, from);
        person
    }

    fn identity(&self, rng: &mut ChaCha8Rng, index: u32, anchor: Day, referred: bool) -> Person {
        let d = &self.params.demographics;
        let u: f64 = rng.gen();
        let sex = if u < d.female_share {
            Sex::Female
        } else if u < d.female_share + d.nonbinary_share {
            Sex::X
        } else {
            Sex::Male
        };
        let race = Race::ALL[self.race.pick(rng)];
        let given = self.names.given(rng, sex, race);
        let family = self.names.family(rng, race);
        let second_family = chance(rng, d.hyphenated_family_share)
            .then(|| self.names.family(rng, race))
            .filter(|second| *second != family && !second.contains(' '));
        let suffix = (sex == Sex::Male && chance(rng, d.suffix_share)).then(|| match rng.gen_range(0..20) {
            0..=15 => Suffix::Jr,
            16..=18 => Suffix::Third,
            _ => Suffix::Sr,
        });
        let age = (d.age_mean + d.age_sd * normal(rng)).clamp(d.age_min as f64, d.age_max as f64 + 0.99);
        let dob = anchor - (age * YEAR_DAYS).round() as i32;
        let state_id = 10_000_000 + self.state_ids.apply(u64::from(index)) as u32;
        // From a stream of its own, so adding places left every other draw as it was.
        let mut rng = stream(self.seed, RESIDENCES, u64::from(index));
        let fixed = !chance(&mut rng, d.no_fixed_address_share);
        let residence = self.places.residence(&mut rng, fixed);
        Person { given, family, second_family, suffix, dob, sex, race, state_id, residence, referred }
    }
}

/// One person's simulation in progress.
struct Sim<'w, 'r, 'o> {
    world: &'w World<'w>,
    rng: &'r mut ChaCha8Rng,
    person: u32,
    out: &'o mut Vec<Event>,
    /// Last day of this person's events.
    to: Day,
}

/// How the program touches one referred person's later events.
#[derive(Clone, Copy)]
struct Treated {
    referral: Day,
    /// An enrolled diversion person (has an intake): the arm effects apply after `referral`.
    enrolled: bool,
}

impl Sim<'_, '_, '_> {
    fn push(&mut self, date: Day, what: What) {
        if date <= self.world.export_end {
            self.out.push(Event { person: self.person, date, what });
        }
    }

    fn referral(&mut self, day0: Day, race: Race, lambda: f64, from: Day) {
        let p = self.world.params;
        let r = &p.referral;
        let arm = if chance(self.rng, p.program.diversion_share) { Arm::Diversion } else { Arm::Comparison };
        let referral_type =
            if chance(self.rng, r.social_contact_share) { ReferralType::SocialContact } else { ReferralType::Arrest };
        let offense = Offense::ALL[self.world.offense.pick(self.rng)];
        // The funnel: shares of all diversion referrals, in Santa Fe's order.
        let mut intake_day = None;
        let screening = match arm {
            Arm::Comparison => None,
            Arm::Diversion => {
                let u: f64 = self.rng.gen();
                if u < r.ineligible_share {
                    Some(Screening::Ineligible)
                } else if u < r.ineligible_share + r.declined_share {
                    Some(Screening::Declined)
                } else {
                    if u < r.ineligible_share + r.declined_share + r.no_timely_intake_share {
                        if chance(self.rng, r.late_intake_share) {
                            intake_day = Some(self.rng.gen_range(8..=r.late_intake_max_days.max(8) as i32));
                        }
                    } else {
                        intake_day = Some((exponential(self.rng, r.intake_mean_days) as i32).min(7));
                    }
                    Some(Screening::Eligible)
                }
            }
        };
        self.push(day0, What::Referral { arm, referral_type, offense, screening, race });
        if chance(self.rng, p.program.rereferral_share) {
            let later = day0 + self.rng.gen_range(90..=p.program.days_after.max(90) as i32);
            let referral_type = if chance(self.rng, r.social_contact_share) {
                ReferralType::SocialContact
            } else {
                ReferralType::Arrest
            };
            let offense = Offense::ALL[self.world.offense.pick(self.rng)];
            if later <= self.to {
                self.push(later, What::Referral { arm, referral_type, offense, screening: None, race });
            }
        }
        let treated = Treated { referral: day0, enrolled: intake_day.is_some() };
        if arm == Arm::Comparison && referral_type == ReferralType::Arrest {
            // Booked and charged as usual for the index arrest.
            let felony = chance(self.rng, p.charges.referral_charge_felony_share);
            self.booking_and_charge(day0, felony, false, None);
        }
        self.arrests(from, self.to + 1, lambda, Some(treated));
        if let Some(days) = intake_day {
            self.case_management(day0 + days);
        }
        self.treatment(from, self.to, Some(treated));
    }

    /// Arrests as a Poisson process over [from, to) with daily rate `lambda`, changed after referral.
    fn arrests(&mut self, from: Day, to: Day, lambda: f64, treated: Option<Treated>) {
        let a = &self.world.params.arrests;
        let mut days = Vec::new();
        match treated {
            None => poisson_days(self.rng, from, to, lambda, &mut days),
            Some(t) => {
                let (m6, later) =
                    if t.enrolled { (self.world.rate_ratio_6m, a.diversion_rate_ratio_later) } else { (1.0, 1.0) };
                let day6 = (t.referral + SIX_MONTHS).min(to);
                poisson_days(self.rng, from, t.referral.min(to), lambda * a.pre_referral_rate_ratio, &mut days);
                poisson_days(self.rng, t.referral, day6, lambda * m6, &mut days);
                poisson_days(self.rng, day6, to, lambda * later, &mut days);
            }
        }
        for day in days {
            let after = treated.filter(|t| t.enrolled && day >= t.referral);
            let violent_share = a.violent_share * if after.is_some() { a.violent_ratio_diversion_after } else { 1.0 };
            let warrant = chance(self.rng, a.warrant_share);
            let violent = chance(self.rng, violent_share);
            let felony = chance(self.rng, a.felony_share);
            self.push(day, What::Arrest { warrant, violent, felony });
            self.booking_and_charge(day, felony, violent, after);
        }
    }

    /// The booking and DA charge that may follow an arrest on `day`.
    fn booking_and_charge(&mut self, day: Day, felony: bool, violent: bool, after: Option<Treated>) {
        let p = self.world.params;
        let booking_share = if after.is_some() { p.jail.booking_share_diversion_after } else { p.jail.booking_share };
        if chance(self.rng, booking_share) {
            let release = day + exponential(self.rng, p.jail.stay_mean_days) as i32;
            let release = (release <= self.world.export_end).then_some(release);
            self.push(day, What::Booking { release });
        }
        if chance(self.rng, p.charges.charge_share) {
            let filed = day + exponential(self.rng, p.charges.filing_delay_mean_days) as i32;
            let disposition = if after.is_some() && chance(self.rng, p.charges.diverted_share_diversion_after) {
                Disposition::Diverted
            } else {
                Disposition::ALL[self.world.disposition.pick(self.rng)]
            };
            let level = if felony { Level::Felony } else { Level::Misdemeanor };
            self.push(filed, What::Charge { level, violent, disposition });
        }
    }

    /// Intake, program status, plan, contacts, services and monthly status of an enrolled person.
    fn case_management(&mut self, intake: Day) {
        let p = self.world.params;
        let cm = &p.casemgmt;
        let mut standing = Standing::new(self.rng);
        let (housing, employment, income_benefits) = standing.at(self.rng, cm, 0);
        self.push(intake, What::Intake { housing, employment, income_benefits });
        self.push(intake, What::ProgramStatus { status: Status::Enrolled });

        let u: f64 = self.rng.gen();
        let followed = intake + (cm.months as f64 * MONTH_DAYS) as i32;
        let (exit, ejected) = if u < p.program_status.ejected_share {
            (Some(intake + self.rng.gen_range(30..=540)), true)
        } else if u < p.program_status.ejected_share + p.program_status.completed_share {
            (Some(intake + self.rng.gen_range(365..=540)), false)
        } else {
            (None, false)
        };
        if let Some(day) = exit {
            let status = if ejected { Status::Ejected } else { Status::Completed };
            self.push(day, What::ProgramStatus { status });
        }
        if chance(self.rng, cm.plan_share) {
            let plan = intake + exponential(self.rng, cm.plan_mean_days) as i32;
            self.push(plan, What::Plan);
        }

        let active_end = exit.map_or(followed, |e| e.min(followed)).min(self.to);
        let mut days = Vec::new();
        let contact_rate = gamma(self.rng, cm.contacts_shape, cm.contacts_per_month) / MONTH_DAYS;
        poisson_days(self.rng, intake, active_end + 1, contact_rate, &mut days);
        for day in days.drain(..) {
            let minutes = (10.0 + exponential(self.rng, 25.0)).min(240.0) as u16;
            self.push(day, What::Contact { minutes });
        }
        poisson_days(self.rng, intake, active_end + 1, cm.services_per_month / MONTH_DAYS, &mut days);
        for day in days {
            let service = ServiceType::ALL[self.world.service.pick(self.rng)];
            self.push(day, What::Service { service });
        }

        // Ejected persons drop out of case management; those who complete are still followed.
        let last = if ejected { exit.unwrap_or(self.to) } else { self.to };
        for month in 1..=cm.months {
            let date = first_of_month_after(intake, month);
            if date > last {
                break;
            }
            let (housing, employment, income_benefits) = standing.at(self.rng, cm, month);
            self.push(date, What::MonthlyStatus { housing, employment, income_benefits });
        }
    }

    /// Treatment episodes at a base rate over [from, to], plus an entry soon after referral.
    fn treatment(&mut self, from: Day, to: Day, treated: Option<Treated>) {
        let t = &self.world.params.treatment;
        let mut days = Vec::new();
        poisson_days(self.rng, from, to + 1, t.rate_per_year / YEAR_DAYS, &mut days);
        if let Some(tr) = treated {
            let share = if tr.enrolled { t.entry_90d_with_intake } else { t.entry_90d_otherwise };
            if chance(self.rng, share) {
                days.push(tr.referral + self.rng.gen_range(0..=90));
            }
        }
        for admit in days {
            let modality = Modality::ALL[self.world.modality.pick(self.rng)];
            let mean = match modality {
                Modality::Mat => t.mean_days.mat,
                Modality::Outpatient => t.mean_days.outpatient,
                Modality::Residential => t.mean_days.residential,
            };
            let discharge = admit + 1 + exponential(self.rng, mean) as i32;
            let missing = chance(self.rng, t.discharge_missing_share);
            let discharge = (discharge <= self.world.export_end && !missing).then_some(discharge);
            self.push(admit, What::Episode { modality, discharge });
        }
    }
}

/// A person's standing in housing, employment and income: uniform draws kept
/// across months so statuses persist, compared with shares that rise over
/// time by the odds multipliers (`casemgmt.effects`). The population share in
/// each state at month m is exactly the target share; `monthly_churn` redraws
/// a month independently.
struct Standing {
    housing: f64,
    transitional: f64,
    work: f64,
    income: f64,
}

impl Standing {
    fn new(rng: &mut ChaCha8Rng) -> Standing {
        Standing { housing: rng.gen(), transitional: rng.gen(), work: rng.gen(), income: rng.gen() }
    }

    fn at(&mut self, rng: &mut ChaCha8Rng, cm: &super::params::CaseMgmt, month: u32) -> (Housing, Employment, bool) {
        let (i, e) = (&cm.intake, &cm.effects);
        let ramp = if e.ramp_months == 0 { 1.0 } else { (month as f64 / e.ramp_months as f64).min(1.0) };
        let shift = |p: f64, odds: f64| expit(logit(p) + ramp * odds.max(1e-9).ln());
        let permanent = shift(i.permanent_share, e.permanent_odds);
        let sheltered = shift(i.sheltered_share, e.sheltered_odds).max(permanent);
        let continuum = shift(i.continuum_share, e.continuum_odds);
        let income = shift(i.income_share, e.income_odds);
        let mut draw = |u: f64| if month > 0 && chance(rng, cm.monthly_churn) { rng.gen() } else { u };
        let (h, t, w, m) = (draw(self.housing), draw(self.transitional), draw(self.work), draw(self.income));
        let housing = if h < permanent {
            Housing::Permanent
        } else if h < sheltered {
            if t < i.transitional_share {
                Housing::Transitional
            } else {
                Housing::Shelter
            }
        } else {
            Housing::Street
        };
        let employment = if w < continuum {
            let position = w / continuum;
            if position < i.training_share {
                Employment::Training
            } else if position < 1.0 - (1.0 - i.training_share) * i.full_time_share {
                Employment::PartTime
            } else {
                Employment::FullTime
            }
        } else {
            Employment::Unemployed
        };
        (housing, employment, m < income)
    }
}

fn logit(p: f64) -> f64 {
    let p = p.clamp(1e-9, 1.0 - 1e-9);
    (p / (1.0 - p)).ln()
}

fn expit(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Days of a Poisson process with `rate` events per day over [from, to), appended to `out`.
fn poisson_days(rng: &mut ChaCha8Rng, from: Day, to: Day, rate: f64, out: &mut Vec<Day>) {
    // NaN and negative rates mean no events.
    if rate.is_nan() || rate <= 0.0 || from >= to {
        return;
    }
    let mut t = from as f64;
    loop {
        t += exponential(rng, 1.0 / rate);
        if t >= to as f64 {
            return;
        }
        out.push(t as Day);
    }
}

/// The arrest-rate multiplier for enrolled diversion persons in days 0..=181
/// that makes the arm-level odds ratio of any arrest in that window equal
/// `arrests.diversion_odds_ratio_6m`.
///
/// With rates gamma(k, θ) per year, P(any arrest in T years at multiplier m)
/// = 1 − (1 + θ m T)^(−k). Comparison persons and diversion persons without
/// an intake keep m = 1; the enrolled share e of the diversion arm follows
/// from the funnel. Solved by bisection; 0 if even m = 0 cannot reach the
/// target (the target then is not reached), 1 when there are no arrests.
pub fn solve_rate_ratio_6m(params: &Params) -> f64 {
    let a = &params.arrests;
    let r = &params.referral;
    let k = a.rate_shape;
    let theta = a.rate_mean / k;
    let t = SIX_MONTHS as f64 / YEAR_DAYS;
    if !(theta > 0.0 && k > 0.0) {
        return 1.0;
    }
    let p_any = |m: f64| 1.0 - (1.0 + theta * m * t).powf(-k);
    let p_comparison = p_any(1.0);
    let enrolled =
        (1.0 - r.ineligible_share - r.declined_share - r.no_timely_intake_share * (1.0 - r.late_intake_share))
            .clamp(0.0, 1.0);
    let odds = a.diversion_odds_ratio_6m * p_comparison / (1.0 - p_comparison);
    let target = odds / (1.0 + odds);
    let p_arm = |m: f64| (1.0 - enrolled) * p_comparison + enrolled * p_any(m);
    if p_arm(0.0) >= target {
        return 0.0;
    }
    let mut hi = 1.0;
    while p_arm(hi) < target && hi < 1e6 {
        hi *= 2.0;
    }
    let mut lo = 0.0;
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if p_arm(mid) < target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_ratio_reaches_the_odds_ratio() {
        let params = Params::defaults().unwrap();
        let m = solve_rate_ratio_6m(&params);
        assert!(m > 0.2 && m < 0.5, "{m}");
        let mut p = params.clone();
        p.arrests.diversion_odds_ratio_6m = 1.0;
        assert!((solve_rate_ratio_6m(&p) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn names_of_kinds_and_agencies_follow_the_schema() {
        assert_eq!(Kind::ALL.len(), 11);
        assert_eq!(Kind::MonthlyStatus.as_str(), "monthly_status");
        assert_eq!(Kind::Charge.agency(), Agency::Da);
        assert_eq!(Employment::PartTime.as_str(), "part_time");
    }
}
