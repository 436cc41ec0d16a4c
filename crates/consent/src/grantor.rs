//! Who may grant what: the grantor table of `docs/consent.md`, checked
//! against the youth's age on the consent date.
//!
//! The table is data ([`GRANTOR_TABLE`]); [`validate_grantor`] only looks it
//! up. A consent's kind implies a category: a verbal referral consent is about
//! `referral`, a Part 2 written consent about `substance_use` — so a Part 2
//! consent for a youth of 12–17 must be the youth's own (42 CFR 2.14, FC 6929)
//! whatever categories it lists.
//!
//! "The youth" is the `youth` role at any age, or `nmd` at 18 and older (an
//! NMD is 18–21 by definition, so `nmd` for a minor is refused).
//!
//! The `referral` category is the family's to give: the SW must have verbal
//! consent *from the youth or family* before referring (Guide for CWS,
//! section Consent), so neither the SW nor the court grants it — for any
//! consent kind that covers `referral`, a `referral_verbal` consent above all.

use chrono::NaiveDate;

use crate::error::{AgeBand, GrantorError};
use crate::model::{Category, ConsentKind, GrantorRole};

const SELF_ADULT: &[GrantorRole] = &[GrantorRole::Youth, GrantorRole::Nmd];
const SELF_MINOR: &[GrantorRole] = &[GrantorRole::Youth];
const SURROGATES: &[GrantorRole] = &[
    GrantorRole::Parent,
    GrantorRole::LegalGuardian,
    GrantorRole::SocialWorker,
    GrantorRole::Court,
];
const FAMILY: &[GrantorRole] = &[GrantorRole::Parent, GrantorRole::LegalGuardian];
const SELF_OR_FAMILY: &[GrantorRole] = &[
    GrantorRole::Youth,
    GrantorRole::Parent,
    GrantorRole::LegalGuardian,
];
const SELF_OR_SURROGATES: &[GrantorRole] = &[
    GrantorRole::Youth,
    GrantorRole::Parent,
    GrantorRole::LegalGuardian,
    GrantorRole::SocialWorker,
    GrantorRole::Court,
];

/// Who may grant one category in one age band, and why.
#[derive(Debug, Clone, Copy)]
pub struct GrantorCell {
    /// Roles allowed.
    pub roles: &'static [GrantorRole],
    /// Who may grant, in plain words.
    pub explanation: &'static str,
    /// The law cited.
    pub law: &'static str,
}

/// One row of the table: a set of categories and the cell per age band
/// (18+, 12–17, under 12).
#[derive(Debug, Clone, Copy)]
pub struct GrantorRow {
    /// Categories of the row.
    pub categories: &'static [Category],
    /// Youth 18 or older.
    pub adult: GrantorCell,
    /// Youth 12 to 17.
    pub minor: GrantorCell,
    /// Child under 12.
    pub child: GrantorCell,
}

const ADULT: GrantorCell = GrantorCell {
    roles: SELF_ADULT,
    explanation: "a youth 18 or older (NMD or former foster youth) consents only for themself",
    law: "FC 6500; 45 CFR 164.502(g)",
};

/// "Who may grant what" (`docs/consent.md`), as data.
pub const GRANTOR_TABLE: &[GrantorRow] = &[
    GrantorRow {
        categories: &[Category::Referral],
        adult: ADULT,
        minor: GrantorCell {
            roles: SELF_OR_FAMILY,
            explanation: "the referral consent is the youth's or the family's: the youth, a parent or a legal guardian gives it, never the SW or the court",
            law: "Guide for CWS, Consent (verbal consent from the youth or family)",
        },
        child: GrantorCell {
            roles: FAMILY,
            explanation: "the referral consent is the family's: a parent or a legal guardian gives it for a child under 12, never the SW or the court",
            law: "Guide for CWS, Consent (verbal consent from the youth or family)",
        },
    },
    GrantorRow {
        categories: &[
            Category::Case,
            Category::Placement,
            Category::Health,
        ],
        adult: ADULT,
        minor: GrantorCell {
            roles: SELF_OR_SURROGATES,
            explanation: "the youth, a parent or legal guardian, the SW or the court may grant it",
            law: "WIC 827; 45 CFR 164.502(g)",
        },
        child: GrantorCell {
            roles: SURROGATES,
            explanation: "a parent or legal guardian, the SW or the court grants it for a child under 12",
            law: "WIC 827; 45 CFR 164.502(g)",
        },
    },
    GrantorRow {
        categories: &[Category::BehavioralHealth],
        adult: ADULT,
        minor: GrantorCell {
            roles: SELF_OR_SURROGATES,
            explanation: "the youth, or a parent, legal guardian, the SW or the court may grant it",
            law: "HSC 124260; FC 6924; WIC 5328",
        },
        child: GrantorCell {
            roles: SURROGATES,
            explanation: "a parent or legal guardian, the SW or the court grants it for a child under 12",
            law: "WIC 5328",
        },
    },
    GrantorRow {
        categories: &[Category::SubstanceUse],
        adult: ADULT,
        minor: GrantorCell {
            roles: SELF_MINOR,
            explanation: "only the youth may grant a Part 2 disclosure at 12-17: the minor consented to treatment alone",
            law: "42 CFR 2.14; FC 6929",
        },
        child: GrantorCell {
            roles: SURROGATES,
            explanation: "a parent or legal guardian, the SW or the court grants it for a child under 12",
            law: "42 CFR 2.14(b)",
        },
    },
    GrantorRow {
        categories: &[Category::Reproductive],
        adult: ADULT,
        minor: GrantorCell {
            roles: SELF_MINOR,
            explanation: "only the youth may grant it: a minor consents to pregnancy and reproductive care alone",
            law: "FC 6925",
        },
        child: GrantorCell {
            roles: SELF_MINOR,
            explanation: "only the youth may grant it, at any age: a minor consents to pregnancy and reproductive care alone",
            law: "FC 6925",
        },
    },
    GrantorRow {
        categories: &[Category::Hiv],
        adult: ADULT,
        minor: GrantorCell {
            roles: SELF_MINOR,
            explanation: "only the youth may grant it at 12-17",
            law: "HSC 121020",
        },
        child: GrantorCell {
            roles: SURROGATES,
            explanation: "a parent or legal guardian, the SW or the court grants it for a child under 12",
            law: "HSC 121020",
        },
    },
];

/// The age band of a youth born on `birth` on `on`; `None` if `on` is before birth.
pub fn age_band(birth: NaiveDate, on: NaiveDate) -> Option<AgeBand> {
    let years = on.years_since(birth)?;
    Some(match years {
        18.. => AgeBand::Adult,
        12..=17 => AgeBand::Minor12To17,
        _ => AgeBand::Under12,
    })
}

/// The table cell for a category and band.
pub fn grantor_cell(category: Category, band: AgeBand) -> Option<&'static GrantorCell> {
    let row = GRANTOR_TABLE
        .iter()
        .find(|r| r.categories.contains(&category))?;
    Some(match band {
        AgeBand::Adult => &row.adult,
        AgeBand::Minor12To17 => &row.minor,
        AgeBand::Under12 => &row.child,
    })
}

/// Checks that `grantor` may grant a consent of `kind` covering `categories`
/// for a youth born on `youth_birth_date`, on `consent_date`. The kind's own
/// category (referral / substance_use) is always checked too.
pub fn validate_grantor(
    kind: ConsentKind,
    categories: &[Category],
    grantor: GrantorRole,
    youth_birth_date: NaiveDate,
    consent_date: NaiveDate,
) -> Result<(), GrantorError> {
    let band = age_band(youth_birth_date, consent_date).ok_or(GrantorError::ConsentBeforeBirth)?;
    let implied = match kind {
        ConsentKind::ReferralVerbal => Some(Category::Referral),
        ConsentKind::Part2Written => Some(Category::SubstanceUse),
        ConsentKind::ReleaseOfInformation => None,
    };
    for category in Category::ALL {
        if !(categories.contains(&category) || implied == Some(category)) {
            continue;
        }
        // Every category has a row; a missing one would be refused, not allowed.
        let Some(cell) = grantor_cell(category, band) else {
            return Err(GrantorError::NotPermitted {
                kind,
                category,
                grantor,
                band,
                explanation: "no grantor rule for this category",
                law: "docs/consent.md grantor table",
            });
        };
        if !cell.roles.contains(&grantor) {
            return Err(GrantorError::NotPermitted {
                kind,
                category,
                grantor,
                band,
                explanation: cell.explanation,
                law: cell.law,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    #[test]
    fn every_category_has_exactly_one_row() {
        for c in Category::ALL {
            let n = GRANTOR_TABLE
                .iter()
                .filter(|r| r.categories.contains(&c))
                .count();
            assert_eq!(n, 1, "{c:?}");
        }
    }

    #[test]
    fn age_band_boundaries_on_birthdays() {
        let birth = d(2010, 3, 15);
        assert_eq!(age_band(birth, d(2022, 3, 14)), Some(AgeBand::Under12));
        assert_eq!(age_band(birth, d(2022, 3, 15)), Some(AgeBand::Minor12To17));
        assert_eq!(age_band(birth, d(2028, 3, 14)), Some(AgeBand::Minor12To17));
        assert_eq!(age_band(birth, d(2028, 3, 15)), Some(AgeBand::Adult));
        assert_eq!(age_band(birth, d(2010, 3, 14)), None);
    }

    #[test]
    fn error_text_carries_no_dates() {
        let e = validate_grantor(
            ConsentKind::Part2Written,
            &[],
            GrantorRole::Parent,
            d(2010, 3, 15),
            d(2025, 1, 1),
        )
        .unwrap_err();
        let s = e.to_string();
        assert!(s.contains("FC 6929"), "{s}");
        assert!(!s.contains("2010"), "{s}");
        assert!(!s.contains("2025"), "{s}");
    }

    #[test]
    fn the_referral_consent_is_the_youths_or_the_familys() {
        let teen = d(2010, 3, 15);
        let child = d(2018, 5, 5);
        let adult = d(2005, 1, 1);
        let on = d(2026, 1, 12);
        let check = |role, birth| {
            validate_grantor(ConsentKind::ReferralVerbal, &[], role, birth, on).is_ok()
        };
        for role in [
            GrantorRole::Youth,
            GrantorRole::Parent,
            GrantorRole::LegalGuardian,
        ] {
            assert!(check(role, teen), "{role:?} 12-17");
        }
        for role in [GrantorRole::Parent, GrantorRole::LegalGuardian] {
            assert!(check(role, child), "{role:?} under 12");
        }
        assert!(
            !check(GrantorRole::Youth, child),
            "a child under 12 does not consent"
        );
        assert!(check(GrantorRole::Nmd, adult) && check(GrantorRole::Youth, adult));
        for birth in [teen, child, adult] {
            for role in [GrantorRole::SocialWorker, GrantorRole::Court] {
                let e = validate_grantor(ConsentKind::ReferralVerbal, &[], role, birth, on)
                    .unwrap_err();
                assert!(
                    matches!(
                        e,
                        GrantorError::NotPermitted {
                            category: Category::Referral,
                            ..
                        }
                    ),
                    "{role:?}: {e}"
                );
            }
        }
        // A release covering `referral` is held to the same rule; one covering
        // only `case` may still come from the SW.
        let roi = |cats: &[Category]| {
            validate_grantor(
                ConsentKind::ReleaseOfInformation,
                cats,
                GrantorRole::SocialWorker,
                teen,
                on,
            )
            .is_ok()
        };
        assert!(!roi(&[Category::Referral, Category::Case]));
        assert!(roi(&[Category::Case]));
    }
}
