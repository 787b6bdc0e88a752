//! The map pages' words in Russian, Kazakh and English, joined to the dashboard's table by
//! `i18n::t` (same rules: every key has all three texts; the i18n tests scan `map/pages.rs` and
//! the `map*.html` templates for unknown keys).

/// (key, Russian, Kazakh, English). `{n}` and `{total}` are filled in by the page.
pub const MESSAGES: &[(&str, &str, &str, &str)] = &[
    ("map.nav", "Карта атак", "Шабуылдар картасы", "Attack map"),
    (
        "map.title",
        "Карта атак",
        "Шабуылдар картасы",
        "Map of attacks",
    ),
    ("map.tab_where", "Откуда", "Қайдан", "Where from"),
    ("map.tab_when", "Когда", "Қашан", "When"),
    ("map.tab_shared", "Кто с кем", "Кім кіммен", "Who with whom"),
    ("map.tabs", "Виды карты", "Карта көріністері", "Map views"),
    (
        "map.where_title",
        "Откуда идёт атакующий трафик",
        "Шабуыл трафигі қайдан келеді",
        "Where attack traffic comes from",
    ),
    (
        "map.world_label",
        "Карта мира: число инцидентов с адресами из каждой страны",
        "Әлем картасы: әр елдің мекенжайлары бар инциденттер саны",
        "World map: incidents with addresses in each country",
    ),
    (
        "map.legend",
        "Инцидентов с адресами из страны",
        "Елдің мекенжайлары бар инциденттер",
        "Incidents with addresses in the country",
    ),
    ("map.no_data", "нет данных", "дерек жоқ", "no data"),
    (
        "map.by_country",
        "По странам",
        "Елдер бойынша",
        "By country",
    ),
    (
        "map.by_asn",
        "По автономным системам (AS)",
        "Автономды жүйелер (AS) бойынша",
        "By autonomous system (AS)",
    ),
    (
        "map.by_network",
        "По сетям (/24, /48, CIDR)",
        "Желілер бойынша (/24, /48, CIDR)",
        "By network (/24, /48, CIDR)",
    ),
    ("map.country", "Страна", "Ел", "Country"),
    ("map.incidents", "Инциденты", "Инциденттер", "Incidents"),
    ("map.indicators", "Адреса", "Мекенжайлар", "Addresses"),
    ("map.requests", "Запросы", "Сұраулар", "Requests"),
    ("map.asn", "AS", "AS", "AS"),
    ("map.org", "Организация", "Ұйым", "Organisation"),
    ("map.network", "Сеть", "Желі", "Network"),
    (
        "map.sample_geo",
        "Карта, страны и AS — по последним {n} инцидентам выборки. Сузьте даты или выберите редакцию, чтобы увидеть более ранние.",
        "Карта, елдер мен AS — таңдаудың соңғы {n} инциденті бойынша. Ертеректегілерін көру үшін күндерді тарылтыңыз не редакцияны таңдаңыз.",
        "The map, countries and AS cover the latest {n} incidents selected. Narrow the dates or pick an outlet to see older ones.",
    ),
    (
        "map.selected_more",
        "Инцидентов в выборке: больше {n}.",
        "Таңдаудағы инциденттер: {n}-ден көп.",
        "Incidents selected: more than {n}.",
    ),
    (
        "map.sample_detail",
        "Таблица сетей — по последним {n} инцидентам выборки.",
        "Желілер кестесі — таңдаудың соңғы {n} инциденті бойынша.",
        "The network table covers the latest {n} incidents selected.",
    ),
    (
        "map.selected",
        "Инцидентов в выборке: {total}.",
        "Таңдаудағы инциденттер: {total}.",
        "Incidents selected: {total}.",
    ),
    (
        "map.no_places",
        "В выборке нет инцидентов с адресами, место которых известно.",
        "Таңдауда орны белгілі мекенжайлары бар инцидент жоқ.",
        "No incident in the selection has an address with a known location.",
    ),
    (
        "map.geo_note",
        "Страна и AS определены по встроенным данным ip-location-db; они бывают неточны. Частные адреса места не имеют.",
        "Ел мен AS кірістірілген ip-location-db деректері бойынша анықталады; олар кейде дәл емес. Жеке мекенжайлардың орны жоқ.",
        "Country and AS come from the built-in ip-location-db data, which can be wrong. Private addresses have no location.",
    ),
    (
        "map.when_title",
        "Когда были атаки",
        "Шабуылдар қашан болды",
        "When the attacks happened",
    ),
    ("map.by_week", "По неделям", "Апта бойынша", "By week"),
    ("map.by_month", "По месяцам", "Ай бойынша", "By month"),
    (
        "map.timeline_label",
        "Столбцы: инциденты за период, цвет — вид атаки",
        "Бағандар: кезеңдегі инциденттер, түсі — шабуыл түрі",
        "Bars: incidents per period, colour by kind",
    ),
    (
        "map.per_outlet",
        "По редакциям",
        "Редакциялар бойынша",
        "By outlet",
    ),
    (
        "map.per_kind",
        "По видам атак",
        "Шабуыл түрлері бойынша",
        "By kind",
    ),
    ("map.period", "Период", "Кезең", "Period"),
    ("map.total", "Всего", "Барлығы", "Total"),
    (
        "map.calendar",
        "Календарь за 365 дней",
        "365 күндік күнтізбе",
        "Calendar of the last 365 days",
    ),
    (
        "map.calendar_hint",
        "Квадрат — день (строки — дни недели с понедельника); чем темнее, тем больше инцидентов.",
        "Шаршы — бір күн (жолдар — дүйсенбіден бастап апта күндері); неғұрлым қою болса, инцидент соғұрлым көп.",
        "Each square is a day (rows are weekdays from Monday); the darker, the more incidents.",
    ),
    (
        "map.busiest",
        "Самые напряжённые дни",
        "Ең ауыр күндер",
        "Busiest days",
    ),
    ("map.day", "День", "Күн", "Day"),
    (
        "map.no_incidents",
        "В выборке нет инцидентов.",
        "Таңдауда инцидент жоқ.",
        "No incidents in the selection.",
    ),
    (
        "map.shared_title",
        "Общие индикаторы редакций",
        "Редакциялардың ортақ индикаторлары",
        "Indicators outlets share",
    ),
    (
        "map.matrix",
        "Сколько индикаторов видели обе редакции",
        "Екі редакция да көрген индикаторлар саны",
        "Indicators both outlets saw",
    ),
    (
        "map.matrix_hint",
        "На диагонали — сколько индикаторов редакции видел ещё хотя бы кто-то.",
        "Диагональда — редакцияның кемінде тағы біреу көрген индикаторлары саны.",
        "On the diagonal: how many of the outlet's indicators at least one other outlet saw.",
    ),
    (
        "map.top_shared",
        "Индикаторы, которые видело больше всего редакций",
        "Ең көп редакция көрген индикаторлар",
        "Indicators seen by the most outlets",
    ),
    ("map.type", "Тип", "Түрі", "Type"),
    ("map.value", "Значение", "Мәні", "Value"),
    (
        "map.outlets",
        "Редакции (инциденты)",
        "Редакциялар (инциденттер)",
        "Outlets (incidents)",
    ),
    (
        "map.shared_none",
        "В выборке нет индикаторов, которые видели две редакции или больше.",
        "Таңдауда екі не одан көп редакция көрген индикатор жоқ.",
        "No indicator in the selection was seen by two outlets or more.",
    ),
    (
        "map.shared_count",
        "Индикаторов, которые видели две редакции или больше: {total}.",
        "Екі не одан көп редакция көрген индикаторлар: {total}.",
        "Indicators seen by two outlets or more: {total}.",
    ),
    (
        "map.sample_shared",
        "По последним {n} инцидентам выборки. Сузьте даты или выберите вид атаки, чтобы увидеть более ранние.",
        "Таңдаудың соңғы {n} инциденті бойынша. Ертеректегілерін көру үшін күндерді тарылтыңыз не шабуыл түрін таңдаңыз.",
        "Covers the latest {n} incidents selected. Narrow the dates or pick a kind to see older ones.",
    ),
    (
        "map.bad_choice",
        "нет такого значения",
        "мұндай мән жоқ",
        "no such value",
    ),
    (
        "map.bad_range",
        "конец раньше начала",
        "соңы басынан ерте",
        "ends before it starts",
    ),
    (
        "map.bad_filter",
        "Проверьте фильтр",
        "Сүзгіні тексеріңіз",
        "Check the filter",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_key_has_three_texts_and_is_unique() {
        let mut seen = HashSet::new();
        for (k, ru, kk, en) in MESSAGES {
            assert!(k.starts_with("map."), "{k}");
            assert!(seen.insert(*k), "duplicate key {k}");
            for (lang, s) in [("ru", ru), ("kk", kk), ("en", en)] {
                assert!(!s.trim().is_empty(), "{k} has no {lang} text");
            }
            let cyrillic = |s: &str| s.chars().any(|c| ('\u{400}'..='\u{4ff}').contains(&c));
            if *k != "map.asn" {
                assert!(cyrillic(ru) && cyrillic(kk), "{k}: not in Cyrillic");
            }
            // Placeholders agree across languages.
            for ph in ["{n}", "{total}"] {
                assert_eq!(ru.contains(ph), en.contains(ph), "{k} {ph}");
                assert_eq!(kk.contains(ph), en.contains(ph), "{k} {ph}");
            }
        }
        assert_eq!(
            crate::i18n::t(crate::i18n::Lang::Kk, "map.tab_when"),
            "Қашан"
        );
    }
}
