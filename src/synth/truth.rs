//! The standard statistics evaluators ask for, computed exactly from a list of true events (`TrueStatistics`).
//!
//! Definitions, shared by every statistic (the steward's query catalog mirrors them):
//! - A person is in an arm if they have a referral; day 0 is the date of
//!   their first referral (the earliest; ties: the first listed), whose arm
//!   and screening count. Persons without a referral are ignored.
//! - A window `[a, b]` holds events whose date minus day 0 lies in a..=b.
//! - Shares and means are over the persons of the arm (or of the stated
//!   subgroup); with no such person they are `null`.
//! - A person-year is 365 days, so the one-year windows `[-365, -1]` and
//!   `[0, 364]` hold exactly one person-year per person.

use serde::{Deserialize, Serialize};

use super::dates::{first_of_month_after, Day};
use super::model::{Arm, Employment, Event, Housing, Level, Screening, What};

/// The true values of the standard statistics, by arm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrueStatistics {
    pub diversion: ArmStatistics,
    pub comparison: ArmStatistics,
}

/// The standard statistics of one arm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArmStatistics {
    pub funnel: Funnel,
    pub arrests: Arrests,
    pub any_arrest: AnyArrest,
    pub charges: Charges,
    pub survival: Survival,
    pub jail: Jail,
    /// Housing, employment and income at intake (month 0) and months 6, 12, 18.
    pub status: Vec<StatusAt>,
    pub timing: Timing,
}

/// 1. The referral funnel. `referred` = `ineligible` + `declined` + `no_timely_intake` + `enrolled`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Funnel {
    /// Persons whose first referral is in this arm.
    pub referred: u64,
    /// Screening = ineligible.
    pub ineligible: u64,
    /// Screening = declined.
    pub declined: u64,
    /// Neither ineligible nor declined (screening eligible or not recorded), and
    /// no intake in `[0, 7]` (a later intake still counts here).
    pub no_timely_intake: u64,
    /// Neither ineligible nor declined, with an intake in `[0, 7]`.
    pub enrolled: u64,
}

/// 2. Arrests per person: mean number of arrest events in each window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Arrests {
    /// Mean arrests in `[-182, -1]`.
    pub before: Option<f64>,
    /// Mean arrests in `[0, 181]`.
    pub after_6m: Option<f64>,
    /// Mean arrests in `[182, 364]`.
    pub after_6_12m: Option<f64>,
    /// Mean over persons of (arrests in `[0, 181]` − arrests in `[-182, -1]`).
    pub difference_6m: Option<f64>,
}

/// 3. Share of persons with at least one arrest in `[0, 181]`, and with at least one arrest whose warrant flag is false.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnyArrest {
    pub share_6m: Option<f64>,
    pub share_non_warrant_6m: Option<f64>,
}

/// 4. Share of persons with a charge filed in `[0, 364]` of level felony, and with one whose violent flag is true.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Charges {
    pub share_felony_12m: Option<f64>,
    pub share_violent_12m: Option<f64>,
}

/// 5. Survival without rearrest: share of persons whose first arrest on or after day 0 is later than day d (or who have none).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Survival {
    pub day_90: Option<f64>,
    pub day_180: Option<f64>,
    pub day_365: Option<f64>,
}

/// 6. Jail use per person-year, the year before (`[-365, -1]`) and the year after (`[0, 364]`).
///
/// Bookings: bookings whose booking date is in the window. Jail days: nights
/// in custody, the days d in the window with booking date ≤ d < release date
/// (a booking with no release date is in custody through the window's end),
/// over all bookings, including ones that began before the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Jail {
    pub bookings_per_person_year_before: Option<f64>,
    pub bookings_per_person_year_after: Option<f64>,
    pub days_per_person_year_before: Option<f64>,
    pub days_per_person_year_after: Option<f64>,
}

/// 7 and 8. Status at one point, among persons with an intake on or after day 0 (their first such intake).
///
/// Month 0 is the intake record itself. Month m > 0 is the monthly status
/// record dated the first day of the calendar month m months after the intake
/// month; persons without that record (left the program, exports ended) are
/// not counted in `persons` nor in the shares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusAt {
    pub month: u32,
    /// Persons with a status at this month.
    pub persons: u64,
    /// Housing = permanent.
    pub permanent: Option<f64>,
    /// Housing ≠ street.
    pub sheltered: Option<f64>,
    /// Employment = part_time or full_time.
    pub employed: Option<f64>,
    /// Income or benefits = true.
    pub income_benefits: Option<f64>,
}

/// 9. Time from referral to intake and plan, among persons with an intake on or after day 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    pub persons_with_intake: u64,
    /// Mean days from day 0 to the first intake on or after day 0.
    pub mean_days_to_intake: Option<f64>,
    /// Share whose first intake is in `[0, 7]`.
    pub share_intake_within_7_days: Option<f64>,
    /// Persons with an intake and a plan on or after day 0.
    pub persons_with_plan: u64,
    /// Mean days from day 0 to the first plan on or after day 0.
    pub mean_days_to_plan: Option<f64>,
}

/// The months at which status is reported.
pub const STATUS_MONTHS: [u32; 4] = [0, 6, 12, 18];

/// What one referred person contributes.
#[derive(Debug, Clone, Default)]
struct PersonTally {
    arm: Option<Arm>,
    day0: Day,
    screening: Option<Screening>,
    arrests_before: u32,
    arrests_6m: u32,
    arrests_6_12m: u32,
    non_warrant_6m: bool,
    first_arrest_after: Option<i32>,
    felony_12m: bool,
    violent_12m: bool,
    bookings_before: u32,
    bookings_after: u32,
    jail_days_before: i64,
    jail_days_after: i64,
    /// (date, days after day 0) of the first intake on or after day 0.
    intake: Option<(Day, i32)>,
    plan_after: Option<i32>,
    /// Status at STATUS_MONTHS: (housing, employment, income).
    status: [Option<(Housing, Employment, bool)>; 4],
}

/// A per-person value the standard evaluation clamps (see `config/evaluation.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clamped {
    /// Arrests in the 6 months after day 0 minus the 6 months before.
    ArrestsChange6m,
    /// Arrests in the 6 months after day 0.
    Arrests6m,
    /// Jail days in the year after day 0.
    JailDaysAfter,
}

/// How many referred persons of each arm (diversion, comparison) have a
/// true `value` outside `[lower, upper]`: the persons a clamp cuts. Synthetic
/// truth only (the demo shows it so the clamps' bias is visible). Pure.
pub fn persons_outside(events: &[Event], value: Clamped, [lower, upper]: [i64; 2]) -> (u64, u64) {
    let of = |t: &PersonTally| -> i64 {
        match value {
            Clamped::ArrestsChange6m => i64::from(t.arrests_6m) - i64::from(t.arrests_before),
            Clamped::Arrests6m => i64::from(t.arrests_6m),
            Clamped::JailDaysAfter => t.jail_days_after,
        }
    };
    let tally = tallies(events);
    let outside =
        |arm: Arm| tally.iter().filter(|t| t.arm == Some(arm) && !(lower..=upper).contains(&of(t))).count() as u64;
    (outside(Arm::Diversion), outside(Arm::Comparison))
}

/// Compute the standard statistics from true events (any order). Pure.
pub fn true_statistics(events: &[Event]) -> TrueStatistics {
    let tally = tallies(events);
    TrueStatistics {
        diversion: arm_statistics(tally.iter().filter(|t| t.arm == Some(Arm::Diversion))),
        comparison: arm_statistics(tally.iter().filter(|t| t.arm == Some(Arm::Comparison))),
    }
}

/// What each referred person contributes, from true events (any order).
fn tallies(events: &[Event]) -> Vec<PersonTally> {
    let persons = events.iter().map(|e| e.person as usize + 1).max().unwrap_or(0);
    let mut tally = vec![PersonTally::default(); persons];

    // Pass 1: each person's first referral, then their first intake on or after it.
    for e in events {
        if let What::Referral { arm, screening, .. } = e.what {
            let t = &mut tally[e.person as usize];
            if t.arm.is_none() || e.date < t.day0 {
                (t.arm, t.day0, t.screening) = (Some(arm), e.date, screening);
            }
        }
    }
    for e in events {
        let t = &mut tally[e.person as usize];
        if let (Some(_), What::Intake { housing, employment, income_benefits }) = (t.arm, &e.what) {
            let rel = e.date - t.day0;
            if rel >= 0 && t.intake.map_or(true, |(date, _)| e.date < date) {
                t.intake = Some((e.date, rel));
                t.status[0] = Some((*housing, *employment, *income_benefits));
            }
        }
    }

    // Pass 2: everything relative to day 0 (and to the intake month).
    for e in events {
        let t = &mut tally[e.person as usize];
        if t.arm.is_none() {
            continue;
        }
        let rel = e.date - t.day0;
        match &e.what {
            What::Arrest { warrant, .. } => {
                match rel {
                    -182..=-1 => t.arrests_before += 1,
                    0..=181 => {
                        t.arrests_6m += 1;
                        t.non_warrant_6m |= !warrant;
                    }
                    182..=364 => t.arrests_6_12m += 1,
                    _ => {}
                }
                if rel >= 0 && t.first_arrest_after.map_or(true, |f| rel < f) {
                    t.first_arrest_after = Some(rel);
                }
            }
            What::Charge { level, violent, .. } if (0..=364).contains(&rel) => {
                t.felony_12m |= *level == Level::Felony;
                t.violent_12m |= *violent;
            }
            What::Booking { release } => {
                match rel {
                    -365..=-1 => t.bookings_before += 1,
                    0..=364 => t.bookings_after += 1,
                    _ => {}
                }
                let end = release.map_or(i64::MAX, |r| i64::from(r - t.day0));
                t.jail_days_before += overlap(i64::from(rel), end, -365, -1);
                t.jail_days_after += overlap(i64::from(rel), end, 0, 364);
            }
            What::Plan if rel >= 0 && t.intake.is_some() && t.plan_after.map_or(true, |p| rel < p) => {
                t.plan_after = Some(rel);
            }
            What::MonthlyStatus { housing, employment, income_benefits } => {
                if let Some((intake, _)) = t.intake {
                    for (slot, &month) in STATUS_MONTHS.iter().enumerate().skip(1) {
                        if e.date == first_of_month_after(intake, month) && t.status[slot].is_none() {
                            t.status[slot] = Some((*housing, *employment, *income_benefits));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    tally
}

/// Days d with start ≤ d < end and lo ≤ d ≤ hi.
fn overlap(start: i64, end: i64, lo: i64, hi: i64) -> i64 {
    (end.min(hi + 1) - start.max(lo)).max(0)
}

fn arm_statistics<'a>(persons: impl Iterator<Item = &'a PersonTally>) -> ArmStatistics {
    let persons: Vec<&PersonTally> = persons.collect();
    let n = persons.len() as u64;
    let count = |f: &dyn Fn(&PersonTally) -> bool| persons.iter().filter(|t| f(t)).count() as u64;
    let share = |f: &dyn Fn(&PersonTally) -> bool| ratio(count(f) as f64, n);
    let mean = |f: &dyn Fn(&PersonTally) -> f64| ratio(persons.iter().map(|t| f(t)).sum(), n);

    let screened_out = |t: &PersonTally| matches!(t.screening, Some(Screening::Ineligible | Screening::Declined));
    let timely = |t: &PersonTally| t.intake.is_some_and(|(_, rel)| rel <= 7);
    let funnel = Funnel {
        referred: n,
        ineligible: count(&|t| t.screening == Some(Screening::Ineligible)),
        declined: count(&|t| t.screening == Some(Screening::Declined)),
        no_timely_intake: count(&|t| !screened_out(t) && !timely(t)),
        enrolled: count(&|t| !screened_out(t) && timely(t)),
    };

    let survived = |d: i32| share(&|t| t.first_arrest_after.map_or(true, |f| f > d));

    let with_intake: Vec<&PersonTally> = persons.iter().copied().filter(|t| t.intake.is_some()).collect();
    let status = STATUS_MONTHS
        .iter()
        .enumerate()
        .map(|(slot, &month)| {
            let at: Vec<(Housing, Employment, bool)> = with_intake.iter().filter_map(|t| t.status[slot]).collect();
            let m = at.len() as u64;
            let share =
                |f: &dyn Fn(&(Housing, Employment, bool)) -> bool| ratio(at.iter().filter(|s| f(s)).count() as f64, m);
            StatusAt {
                month,
                persons: m,
                permanent: share(&|s| s.0 == Housing::Permanent),
                sheltered: share(&|s| s.0.sheltered()),
                employed: share(&|s| s.1.employed()),
                income_benefits: share(&|s| s.2),
            }
        })
        .collect();

    let k = with_intake.len() as u64;
    let intake_days: Vec<i32> = with_intake.iter().filter_map(|t| t.intake.map(|(_, rel)| rel)).collect();
    let plan_days: Vec<i32> = with_intake.iter().filter_map(|t| t.plan_after).collect();
    let timing = Timing {
        persons_with_intake: k,
        mean_days_to_intake: ratio(intake_days.iter().map(|&d| f64::from(d)).sum(), k),
        share_intake_within_7_days: ratio(intake_days.iter().filter(|&&d| d <= 7).count() as f64, k),
        persons_with_plan: plan_days.len() as u64,
        mean_days_to_plan: ratio(plan_days.iter().map(|&d| f64::from(d)).sum(), plan_days.len() as u64),
    };

    ArmStatistics {
        funnel,
        arrests: Arrests {
            before: mean(&|t| f64::from(t.arrests_before)),
            after_6m: mean(&|t| f64::from(t.arrests_6m)),
            after_6_12m: mean(&|t| f64::from(t.arrests_6_12m)),
            difference_6m: mean(&|t| f64::from(t.arrests_6m) - f64::from(t.arrests_before)),
        },
        any_arrest: AnyArrest {
            share_6m: share(&|t| t.arrests_6m > 0),
            share_non_warrant_6m: share(&|t| t.non_warrant_6m),
        },
        charges: Charges { share_felony_12m: share(&|t| t.felony_12m), share_violent_12m: share(&|t| t.violent_12m) },
        survival: Survival { day_90: survived(90), day_180: survived(180), day_365: survived(365) },
        jail: Jail {
            bookings_per_person_year_before: mean(&|t| f64::from(t.bookings_before)),
            bookings_per_person_year_after: mean(&|t| f64::from(t.bookings_after)),
            days_per_person_year_before: mean(&|t| t.jail_days_before as f64),
            days_per_person_year_after: mean(&|t| t.jail_days_after as f64),
        },
        status,
        timing,
    }
}

fn ratio(numerator: f64, denominator: u64) -> Option<f64> {
    (denominator > 0).then(|| numerator / denominator as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::dates::days_from_civil;
    use crate::synth::model::{Disposition, Offense, Race, ReferralType};

    fn referral(person: u32, date: Day, arm: Arm, screening: Option<Screening>) -> Event {
        let what = What::Referral {
            arm,
            referral_type: ReferralType::Arrest,
            offense: Offense::Possession,
            screening,
            race: Race::Black,
        };
        Event { person, date, what }
    }

    fn ev(person: u32, date: Day, what: What) -> Event {
        Event { person, date, what }
    }

    fn arrest(person: u32, date: Day, warrant: bool) -> Event {
        ev(person, date, What::Arrest { warrant, violent: false, felony: false })
    }

    #[test]
    fn statistics_of_a_hand_built_event_list() {
        let d0 = days_from_civil(2017, 3, 10);
        let intake = |h, e, i| What::Intake { housing: h, employment: e, income_benefits: i };
        let monthly = |h, e, i| What::MonthlyStatus { housing: h, employment: e, income_benefits: i };
        let events = vec![
            // Person 0: diversion, enrolled (intake day 3, plan day 20).
            referral(0, d0, Arm::Diversion, Some(Screening::Eligible)),
            arrest(0, d0 - 100, false),
            arrest(0, d0 - 10, true),
            arrest(0, d0 + 50, true),
            arrest(0, d0 + 200, false),
            ev(0, d0 + 3, intake(Housing::Street, Employment::Unemployed, false)),
            ev(0, d0 + 20, What::Plan),
            ev(0, first_of_month_after(d0 + 3, 6), monthly(Housing::Permanent, Employment::PartTime, true)),
            ev(0, first_of_month_after(d0 + 3, 5), monthly(Housing::Street, Employment::Unemployed, false)),
            // A booking spanning day 0: 5 nights before, 5 after.
            ev(0, d0 - 5, What::Booking { release: Some(d0 + 5) }),
            ev(0, d0 + 30, What::Charge { level: Level::Felony, violent: false, disposition: Disposition::Pending }),
            // Person 1: diversion, declined; a later second referral is ignored.
            referral(1, d0, Arm::Diversion, Some(Screening::Declined)),
            referral(1, d0 + 400, Arm::Comparison, None),
            // Person 2: diversion, eligible, late intake on day 30.
            referral(2, d0, Arm::Diversion, Some(Screening::Eligible)),
            ev(2, d0 + 30, intake(Housing::Shelter, Employment::FullTime, true)),
            // Person 3: comparison, arrests on day 0 and day 100, booking still in custody.
            referral(3, d0, Arm::Comparison, None),
            arrest(3, d0, false),
            arrest(3, d0 + 100, false),
            ev(3, d0 + 300, What::Booking { release: None }),
            ev(3, d0 + 365, What::Charge { level: Level::Felony, violent: true, disposition: Disposition::Pending }),
            // Person 4: never referred: ignored.
            arrest(4, d0, false),
        ];
        let s = true_statistics(&events);
        let d = &s.diversion;
        assert_eq!(d.funnel, Funnel { referred: 3, ineligible: 0, declined: 1, no_timely_intake: 1, enrolled: 1 });
        assert_eq!(d.arrests.before, Some(2.0 / 3.0));
        assert_eq!(d.arrests.after_6m, Some(1.0 / 3.0));
        assert_eq!(d.arrests.after_6_12m, Some(1.0 / 3.0));
        assert_eq!(d.arrests.difference_6m, Some(-1.0 / 3.0));
        assert_eq!(d.any_arrest, AnyArrest { share_6m: Some(1.0 / 3.0), share_non_warrant_6m: Some(0.0) });
        assert_eq!(d.charges, Charges { share_felony_12m: Some(1.0 / 3.0), share_violent_12m: Some(0.0) });
        assert_eq!(
            d.survival,
            Survival { day_90: Some(2.0 / 3.0), day_180: Some(2.0 / 3.0), day_365: Some(2.0 / 3.0) }
        );
        assert_eq!(d.jail.bookings_per_person_year_before, Some(1.0 / 3.0));
        assert_eq!(d.jail.bookings_per_person_year_after, Some(0.0));
        assert_eq!(d.jail.days_per_person_year_before, Some(5.0 / 3.0));
        assert_eq!(d.jail.days_per_person_year_after, Some(5.0 / 3.0));
        assert_eq!(d.status[0].persons, 2);
        assert_eq!(d.status[0].sheltered, Some(0.5));
        assert_eq!(d.status[0].employed, Some(0.5));
        assert_eq!(
            d.status[1],
            StatusAt {
                month: 6,
                persons: 1,
                permanent: Some(1.0),
                sheltered: Some(1.0),
                employed: Some(1.0),
                income_benefits: Some(1.0),
            }
        );
        assert_eq!(d.status[2].persons, 0);
        assert_eq!(d.status[2].permanent, None);
        assert_eq!(
            d.timing,
            Timing {
                persons_with_intake: 2,
                mean_days_to_intake: Some(16.5),
                share_intake_within_7_days: Some(0.5),
                persons_with_plan: 1,
                mean_days_to_plan: Some(20.0),
            }
        );

        let c = &s.comparison;
        assert_eq!(c.funnel, Funnel { referred: 1, ineligible: 0, declined: 0, no_timely_intake: 1, enrolled: 0 });
        assert_eq!(c.any_arrest.share_6m, Some(1.0));
        assert_eq!(c.survival.day_90, Some(0.0));
        assert_eq!(c.charges.share_violent_12m, Some(0.0), "day 365 is outside [0, 364]");
        assert_eq!(c.jail.days_per_person_year_after, Some(65.0), "in custody from day 300 through day 364");
        assert_eq!(c.timing.mean_days_to_intake, None);
    }

    #[test]
    fn no_events_no_persons() {
        let s = true_statistics(&[]);
        assert_eq!(s.diversion.funnel.referred, 0);
        assert_eq!(s.diversion.arrests.before, None);
    }
}
