//! Copy-pasted threats: a small embedded ru/kk/en lexicon of threat phrases, matched on the
//! same folded text as the flood clustering ([`crate::normalize::matching_text`], so `убью`
//! written with Latin look-alikes or stretched letters still matches), and a finding when
//! near-identical threatening texts come from several accounts.
//!
//! A threat sent by a handful of accounts is already a campaign: the bar
//! ([`ThreatParams::min_authors`], 3 by default) is far below the flood's 25. A single
//! threat from one account is not reported here: it is a matter for the newsroom's safety
//! process, not for a bot-flood tool.
//!
//! The lexicon is deliberately narrow (explicit threats of killing, violence, arson and
//! bombing, and "we know where you live"), never insults or swearing; every rule has its
//! text in Russian, Kazakh and English for the report. Patterns match at the start of a word
//! and the last word of a pattern is a prefix (`убью` matches `убьют`).

use crate::normalize::matching_text;

/// Knobs.
#[derive(Debug, Clone, Copy)]
pub struct ThreatParams {
    /// Distinct accounts posting near-identical threatening text.
    pub min_authors: usize,
}

impl Default for ThreatParams {
    fn default() -> Self {
        ThreatParams { min_authors: 3 }
    }
}

/// One rule of the lexicon.
#[derive(Debug)]
pub struct ThreatRule {
    pub id: &'static str,
    pub ru: &'static str,
    pub kk: &'static str,
    pub en: &'static str,
    patterns: &'static [&'static str],
}

/// The lexicon. Patterns are written as people type them; they are folded at start.
pub const RULES: &[ThreatRule] = &[
    ThreatRule {
        id: "threat.kill",
        ru: "Угроза убийством («убью», «пристрелю», «тебе конец»)",
        kk: "Өлтіремін деп қорқыту («өлтіремін», «атып тастаймын»)",
        en: "Threat to kill (\"I will kill you\", \"you are dead\")",
        patterns: &[
            "убью",
            "убьём",
            "убьем",
            "убить тебя",
            "убить вас",
            "прибью",
            "зарежу",
            "пристрелю",
            "застрелю",
            "сдохнешь",
            "сдохните",
            "тебе конец",
            "вам конец",
            "тебе не жить",
            "вам не жить",
            "өлтіремін",
            "өлтіреміз",
            "өлтіреді",
            "бауыздаймын",
            "атып тастаймын",
            "атып өлтір",
            "kill you",
            "i will kill",
            "we will kill",
            "you will die",
            "you are dead",
            "you're dead",
            "shoot you",
        ],
    },
    ThreatRule {
        id: "threat.violence",
        ru: "Угроза насилием, поджогом или взрывом («сожжём редакцию», «взорвём»)",
        kk: "Зорлық, өртеу не жару қаупі («өртейміз», «жарып жібереміз»)",
        en: "Threat of violence, arson or a bomb (\"we will burn down\", \"blow up\")",
        patterns: &[
            "сожжём",
            "сожжем",
            "сожгу",
            "подожжём",
            "подожжем",
            "подожгу",
            "взорвём",
            "взорвем",
            "взорву",
            "изобьём",
            "изобьем",
            "покалечим",
            "сломаем тебе",
            "переломаем",
            "өртейміз",
            "өртеймін",
            "өртеп жібер",
            "жарып жібер",
            "сабаймыз",
            "burn down",
            "blow up",
            "bomb your",
            "beat you",
            "break your",
        ],
    },
    ThreatRule {
        id: "threat.we_know_where",
        ru: "«Мы знаем, где ты живёшь»: угроза найти человека или его семью",
        kk: "«Қайда тұратыныңды білеміз»: адамды не отбасын табамыз деп қорқыту",
        en: "\"We know where you live\": a threat to find the person or their family",
        patterns: &[
            "знаем где ты живешь",
            "знаем где ты живёшь",
            "знаю где ты живешь",
            "знаю где ты живёшь",
            "знаем где живешь",
            "знаем где живёшь",
            "найдём тебя",
            "найдем тебя",
            "найдём твою семью",
            "найдем твою семью",
            "за тобой придут",
            "жди гостей",
            "подумай о детях",
            "подумай о семье",
            "қайда тұратыныңды білеміз",
            "қайда тұратыныңды білем",
            "сені табамыз",
            "үйіңді білеміз",
            "балаларыңды ойла",
            "know where you live",
            "we will find you",
            "we'll find you",
            "coming for you",
            "think of your family",
            "think of your children",
        ],
    },
];

/// The folded lexicon, searched in one pass per text (Aho-Corasick): the flood analysis runs
/// it on every message, a million of them in the benchmark.
pub struct Lexicon {
    /// Rule index per pattern.
    rule_of: Vec<usize>,
    ac: Option<aho_corasick::AhoCorasick>,
}

impl Default for Lexicon {
    fn default() -> Self {
        Lexicon::new()
    }
}

impl Lexicon {
    pub fn new() -> Lexicon {
        let mut rule_of = Vec::new();
        let mut patterns = Vec::new();
        for (i, r) in RULES.iter().enumerate() {
            for p in r.patterns {
                let f = matching_text(p);
                if !f.is_empty() {
                    rule_of.push(i);
                    patterns.push(f);
                }
            }
        }
        // Building from a fixed table cannot fail in practice; if it ever did, the lexicon
        // matches nothing rather than taking the analysis down.
        let ac = aho_corasick::AhoCorasick::new(&patterns).ok();
        Lexicon { rule_of, ac }
    }

    /// Rules (a bit per index into [`RULES`]) that a folded text matches.
    pub fn matches(&self, folded: &str) -> u32 {
        let Some(ac) = &self.ac else {
            return 0;
        };
        let mut mask = 0u32;
        for m in ac.find_overlapping_iter(folded) {
            let at = m.start();
            if (at == 0 || folded.as_bytes().get(at - 1) == Some(&b' '))
                && let Some(&i) = self.rule_of.get(m.pattern().as_usize())
            {
                mask |= 1 << i;
            }
        }
        mask
    }
}

/// Rule ids of a mask.
pub fn rule_ids(mask: u32) -> Vec<&'static str> {
    RULES
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, r)| r.id)
        .collect()
}

/// Rules by id.
pub fn rule(id: &str) -> Option<&'static ThreatRule> {
    RULES.iter().find(|r| r.id == id)
}

/// One finding: threatening messages of one near-duplicate cluster from several accounts.
#[derive(Debug, Clone)]
pub struct ThreatFinding {
    /// Indices into `Dataset::messages`, in time order.
    pub members: Vec<u32>,
    pub authors: usize,
    /// Rules matched by any member.
    pub rules: u32,
}

/// Groups threatening messages (`hits[i]` = rule mask of message `i`) by cluster and keeps
/// clusters with enough distinct accounts.
pub fn find(
    ds: &crate::Dataset,
    cluster_of: &[u32],
    hits: &[(u32, u32)],
    p: &ThreatParams,
) -> Vec<ThreatFinding> {
    use std::collections::{BTreeMap, HashSet};
    let mut by_cluster: BTreeMap<u32, Vec<(u32, u32)>> = BTreeMap::new();
    for &(i, mask) in hits {
        let c = cluster_of
            .get(i as usize)
            .copied()
            .unwrap_or(crate::cluster::NO_CLUSTER);
        if c != crate::cluster::NO_CLUSTER {
            by_cluster.entry(c).or_default().push((i, mask));
        }
    }
    let mut out = Vec::new();
    for (_, mut v) in by_cluster {
        let authors: HashSet<&str> = v
            .iter()
            .map(|(i, _)| ds.messages[*i as usize].author_id.as_str())
            .collect();
        if authors.len() < p.min_authors.max(1) {
            continue;
        }
        v.sort_by_key(|(i, _)| (ds.messages[*i as usize].time, *i));
        out.push(ThreatFinding {
            authors: authors.len(),
            rules: v.iter().fold(0, |m, (_, r)| m | r),
            members: v.into_iter().map(|(i, _)| i).collect(),
        });
    }
    out.sort_by_key(|t| std::cmp::Reverse(t.members.len()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str) -> Vec<&'static str> {
        rule_ids(Lexicon::new().matches(&matching_text(s)))
    }

    #[test]
    fn threats_match_in_three_languages_and_through_disguises() {
        assert_eq!(
            m("Журналист, мы знаем где ты живёшь"),
            ["threat.we_know_where"]
        );
        assert_eq!(m("УБЬЮЮЮ тебя"), ["threat.kill"]);
        // Latin look-alikes inside Cyrillic: "убью" with Latin y and b.
        assert_eq!(m("yбью"), ["threat.kill"]);
        assert_eq!(m("Сені өлтіреміз!"), ["threat.kill"]);
        assert_eq!(m("we will burn down your office"), ["threat.violence"]);
        assert_eq!(
            m("Редакцию сожжём, а тебе конец"),
            ["threat.kill", "threat.violence"]
        );
    }

    #[test]
    fn ordinary_words_do_not_match() {
        for s in [
            "Спасибо за статью",
            "Это бомба, а не расследование!",
            "Рахмет, жақсы мақала",
            "skill you have",
            "Позор!",
            "убийство расследуют",
        ] {
            assert!(m(s).is_empty(), "{s}: {:?}", m(s));
        }
    }

    #[test]
    fn every_rule_has_text_in_three_languages() {
        for r in RULES {
            assert!(
                !r.ru.is_empty() && !r.kk.is_empty() && !r.en.is_empty(),
                "{}",
                r.id
            );
            assert!(rule(r.id).is_some());
        }
        assert!(RULES.len() <= 32);
    }
}
