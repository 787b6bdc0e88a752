//! The dashboard's words in Russian (the default), Kazakh (Cyrillic) and English.
//!
//! One table: each message key with its three texts. A key missing from the table shows as the
//! key itself rather than failing a page, and the tests below make sure that never ships: every
//! key has all three texts, and every key the pages use is in the table.

use std::collections::HashMap;
use std::sync::OnceLock;

/// A language of the dashboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Ru,
    Kk,
    En,
}

impl Lang {
    /// Every language, in the order the switch shows them.
    pub const ALL: &'static [Lang] = &[Lang::Ru, Lang::Kk, Lang::En];

    /// The BCP 47 code (`<html lang>`, `?lang=`, the cookie).
    pub fn code(self) -> &'static str {
        match self {
            Lang::Ru => "ru",
            Lang::Kk => "kk",
            Lang::En => "en",
        }
    }

    /// The language's own name, for the switch.
    pub fn label(self) -> &'static str {
        match self {
            Lang::Ru => "Русский",
            Lang::Kk => "Қазақша",
            Lang::En => "English",
        }
    }

    /// Reads a code; anything else is `None`.
    pub fn parse(s: &str) -> Option<Lang> {
        match s.trim() {
            "ru" => Some(Lang::Ru),
            "kk" => Some(Lang::Kk),
            "en" => Some(Lang::En),
            _ => None,
        }
    }
}

/// (key, Russian, Kazakh, English).
const MESSAGES: &[(&str, &str, &str, &str)] = &[
    // Frame.
    ("nav.label", "Разделы", "Бөлімдер", "Sections"),
    ("nav.incidents", "Инциденты", "Инциденттер", "Incidents"),
    (
        "nav.report",
        "Сообщить об атаке",
        "Шабуыл туралы хабарлау",
        "Report an attack",
    ),
    ("nav.settings", "Настройки", "Баптаулар", "Settings"),
    ("nav.logout", "Выйти", "Шығу", "Log out"),
    ("nav.language", "Язык", "Тіл", "Language"),
    (
        "footer.text",
        "Qalqan Atlas — общий реестр атак на редакции. Время — Астана (UTC+5).",
        "Qalqan Atlas — редакцияларға шабуылдардың ортақ тізілімі. Уақыт — Астана (UTC+5).",
        "Qalqan Atlas — the shared registry of attacks on newsrooms. Times are Astana time (UTC+5).",
    ),
    // Login.
    ("login.title", "Вход", "Кіру", "Log in"),
    (
        "login.email",
        "Электронная почта",
        "Электрондық пошта",
        "E-mail",
    ),
    ("login.password", "Пароль", "Құпиясөз", "Password"),
    ("login.submit", "Войти", "Кіру", "Log in"),
    (
        "login.failed",
        "Неверный e-mail или пароль.",
        "E-mail немесе құпиясөз қате.",
        "Wrong e-mail or password.",
    ),
    (
        "login.throttled",
        "Слишком много неудачных попыток. Попробуйте через 15 минут.",
        "Сәтсіз әрекеттер тым көп. 15 минуттан кейін қайталаңыз.",
        "Too many failed attempts. Try again in 15 minutes.",
    ),
    (
        "login.help",
        "Учётную запись создаёт администратор вашей редакции.",
        "Тіркелгіні редакцияңыздың әкімшісі жасайды.",
        "Your outlet's admin creates your account.",
    ),
    ("refresh.continue", "Продолжить", "Жалғастыру", "Continue"),
    // The list.
    ("list.title", "Инциденты", "Инциденттер", "Incidents"),
    (
        "list.report",
        "Сообщить об атаке",
        "Шабуыл туралы хабарлау",
        "Report an attack",
    ),
    ("list.filters", "Фильтры", "Сүзгілер", "Filters"),
    ("list.any", "Все", "Барлығы", "Any"),
    ("list.kind", "Вид атаки", "Шабуыл түрі", "Kind"),
    ("list.status", "Статус", "Мәртебесі", "Status"),
    ("list.outlet", "Редакция", "Редакция", "Outlet"),
    (
        "list.search",
        "Поиск по тексту",
        "Мәтіннен іздеу",
        "Search text",
    ),
    ("list.from", "С даты", "Күннен бастап", "From"),
    ("list.to", "По дату", "Күнге дейін", "To"),
    ("list.apply", "Показать", "Көрсету", "Show"),
    ("list.reset", "Сбросить", "Тазалау", "Reset"),
    ("list.date", "Дата", "Күні", "Date"),
    ("list.incident", "Инцидент", "Инцидент", "Incident"),
    (
        "list.date_unknown",
        "дата неизвестна",
        "күні белгісіз",
        "date unknown",
    ),
    (
        "list.empty",
        "Инцидентов не найдено.",
        "Инциденттер табылмады.",
        "No incidents found.",
    ),
    (
        "list.next",
        "Следующая страница →",
        "Келесі бет →",
        "Next page →",
    ),
    ("list.first", "← В начало", "← Басына", "← First page"),
    (
        "list.times",
        "Вы видите инциденты своей редакции и те, которыми с вами поделились по TLP.",
        "Сіз өз редакцияңыздың инциденттерін және TLP бойынша сізбен бөліскендерін көресіз.",
        "You see your outlet's incidents and those shared with you under TLP.",
    ),
    // Statuses, confidence, roles, targets.
    ("status.reported", "Сообщено", "Хабарланды", "Reported"),
    ("status.verified", "Подтверждено", "Расталды", "Verified"),
    ("status.closed", "Закрыто", "Жабылды", "Closed"),
    (
        "confidence.suspected",
        "предположительно атака",
        "шабуыл болуы мүмкін",
        "suspected attack",
    ),
    (
        "confidence.confirmed",
        "атака подтверждена",
        "шабуыл расталды",
        "confirmed attack",
    ),
    ("role.viewer", "Читатель", "Оқырман", "Viewer"),
    ("role.editor", "Редактор", "Редактор", "Editor"),
    ("role.admin", "Администратор", "Әкімші", "Admin"),
    ("role.ingest", "Токен щита", "Қалқан токені", "Shield token"),
    ("target.website", "Сайт", "Сайт", "Website"),
    (
        "target.social",
        "Аккаунт в соцсети",
        "Әлеуметтік желідегі аккаунт",
        "Social account",
    ),
    ("target.mail", "Почта", "Пошта", "Mail"),
    ("target.server", "Сервер", "Сервер", "Server"),
    // TLP in plain words.
    (
        "tlp.clear",
        "Все, в том числе публичная статистика.",
        "Барлығы, соның ішінде ашық статистика.",
        "Anyone, including the public statistics.",
    ),
    (
        "tlp.green",
        "Все редакции нашей группы.",
        "Тобымыздағы барлық редакция.",
        "Every outlet of our task force.",
    ),
    (
        "tlp.amber",
        "Наша редакция и редакции, которым мы доверяем (список в настройках), а также отмеченные ниже.",
        "Біздің редакция және біз сенетін редакциялар (тізімі баптауларда), сондай-ақ төменде белгіленгендер.",
        "Our outlet and the outlets we trust (listed in settings), plus those ticked below.",
    ),
    (
        "tlp.amber_strict",
        "Только наша редакция.",
        "Тек біздің редакция.",
        "Only our outlet.",
    ),
    (
        "tlp.red",
        "Только отмеченные ниже редакции (и мы).",
        "Тек төменде белгіленген редакциялар (және біз).",
        "Only the outlets ticked below (and us).",
    ),
    // The guided form.
    (
        "new.title",
        "Сообщить об атаке",
        "Шабуыл туралы хабарлау",
        "Report an attack",
    ),
    (
        "new.step1",
        "Что случилось? Выберите самое близкое.",
        "Не болды? Ең жақынын таңдаңыз.",
        "What happened? Pick the closest.",
    ),
    (
        "new.change_kind",
        "выбрать другое",
        "басқасын таңдау",
        "pick another",
    ),
    (
        "new.fix",
        "Проверьте поля формы:",
        "Форма өрістерін тексеріңіз:",
        "Please check these fields:",
    ),
    (
        "new.what",
        "Что пострадало",
        "Не зардап шекті",
        "What was hit",
    ),
    ("new.platform", "Платформа", "Платформа", "Platform"),
    ("new.platform_other", "другая", "басқа", "other"),
    (
        "new.platform_if_social",
        "Платформа (если это соцсеть)",
        "Платформа (әлеуметтік желі болса)",
        "Platform (for a social account)",
    ),
    (
        "new.account",
        "Наш аккаунт или канал",
        "Біздің аккаунт не арна",
        "Our account or channel",
    ),
    (
        "new.followers_added",
        "Сколько ботов-подписчиков пришло",
        "Қанша бот-жазылушы келді",
        "How many bot followers joined",
    ),
    (
        "new.comments",
        "Сколько бот-комментариев или жалоб",
        "Қанша бот-пікір не шағым",
        "How many bot comments or complaints",
    ),
    (
        "new.url",
        "Адрес сайта или страницы",
        "Сайттың не беттің мекенжайы",
        "Address of the site or page",
    ),
    (
        "new.downtime",
        "Сколько минут сайт не работал",
        "Сайт неше минут істемеді",
        "Minutes the site was down",
    ),
    (
        "new.requests",
        "Сколько запросов пришло (если знаете)",
        "Қанша сұраныс келді (білсеңіз)",
        "How many requests (if you know)",
    ),
    (
        "new.mail_domain",
        "Домен нашей почты",
        "Поштамыздың домені",
        "Our mail domain",
    ),
    (
        "new.server_host",
        "Сервер (имя или адрес)",
        "Сервер (аты не мекенжайы)",
        "Server (name or address)",
    ),
    (
        "new.target_kind",
        "Что пострадало",
        "Не зардап шекті",
        "What was hit",
    ),
    (
        "new.target_none",
        "не указано",
        "көрсетілмеген",
        "not given",
    ),
    (
        "new.target",
        "Адрес, аккаунт или имя",
        "Мекенжай, аккаунт не атау",
        "Address, account or name",
    ),
    (
        "new.when",
        "Когда началось",
        "Қашан басталды",
        "When it started",
    ),
    ("new.date", "Дата", "Күні", "Date"),
    (
        "new.time",
        "Время по Астане (необязательно)",
        "Астана уақыты (міндетті емес)",
        "Astana time (optional)",
    ),
    (
        "new.date_unknown",
        "Точная дата неизвестна",
        "Нақты күні белгісіз",
        "Exact date unknown",
    ),
    ("new.about", "Описание", "Сипаттама", "Description"),
    (
        "new.title_field",
        "Короткий заголовок",
        "Қысқа тақырып",
        "Short title",
    ),
    (
        "new.title_hint",
        "Можно оставить пустым: заголовок составится из вида атаки.",
        "Бос қалдыруға болады: тақырып шабуыл түрінен құрастырылады.",
        "May be left empty: the kind of attack makes one.",
    ),
    (
        "new.description",
        "Что произошло",
        "Не болды",
        "What happened",
    ),
    (
        "new.description_hint",
        "Своими словами: что вы заметили, что уже сделали.",
        "Өз сөзіңізбен: не байқадыңыз, не істедіңіз.",
        "In your own words: what you noticed, what you did already.",
    ),
    (
        "new.confirmed",
        "Мы уверены, что это атака",
        "Бұл шабуыл екеніне сенімдіміз",
        "We are sure this is an attack",
    ),
    (
        "new.who",
        "Кто может это видеть",
        "Мұны кім көре алады",
        "Who can see this",
    ),
    (
        "new.recipients",
        "Редакции-получатели",
        "Алушы редакциялар",
        "Recipient outlets",
    ),
    (
        "new.recipients_hint",
        "Обязательно для TLP:RED; для TLP:AMBER — дополнительно к доверенным.",
        "TLP:RED үшін міндетті; TLP:AMBER үшін — сенімділерге қосымша.",
        "Required for TLP:RED; for TLP:AMBER, in addition to the trusted outlets.",
    ),
    ("new.submit", "Отправить", "Жіберу", "Submit"),
    // One plain sentence per built-in kind, as a journalist would say it.
    (
        "say.http_flood",
        "Сайт тормозит или падает из-за потока запросов",
        "Сайт сұраныстар ағынынан баяулап не құлап жатыр",
        "Our site is slow or down under a flood of requests",
    ),
    (
        "say.unreachable",
        "Сайт не открывается из Казахстана, а из-за рубежа открывается",
        "Сайт Қазақстаннан ашылмайды, ал шетелден ашылады",
        "Our site does not open from Kazakhstan but works from abroad",
    ),
    (
        "say.bot_followers",
        "В наш Telegram-канал пришли боты",
        "Telegram-арнамызға боттар келді",
        "Bots joined our Telegram channel",
    ),
    (
        "say.bot_comments",
        "Под нашими постами пишут боты",
        "Жазбаларымыздың астына боттар жазып жатыр",
        "Bots flood the comments under our posts",
    ),
    (
        "say.threat_comments",
        "Нам угрожают в комментариях или сообщениях",
        "Бізге пікірлерде не хабарламаларда қоқан-лоқы жасап жатыр",
        "We get threats in comments or messages",
    ),
    (
        "say.mass_complaints",
        "Наш Instagram заблокировали после массовых жалоб",
        "Instagram-ымыз жаппай шағымнан кейін бұғатталды",
        "Our Instagram was blocked after mass complaints",
    ),
    (
        "say.account_takeover",
        "Кто-то пытается войти в наш аккаунт или уже вошёл",
        "Біреу аккаунтымызға кіруге тырысып жатыр не кіріп алды",
        "Someone is trying to get into our account, or got in",
    ),
    (
        "say.phishing",
        "Нам прислали поддельное письмо или ссылку, чтобы украсть пароль",
        "Құпиясөзді ұрлау үшін бізге жалған хат не сілтеме жіберілді",
        "We got a fake message or link meant to steal a password",
    ),
    (
        "say.intrusion",
        "Кто-то пытается взломать наш сервер или почту",
        "Біреу серверімізді не поштамызды бұзуға тырысып жатыр",
        "Someone is trying to break into our server or mail",
    ),
    (
        "say.defacement",
        "На нашем сайте появилось чужое содержимое",
        "Сайтымызда бөгде мазмұн пайда болды",
        "Someone changed what our site shows",
    ),
    (
        "say.doxxing",
        "Опубликовали личные данные нашего сотрудника",
        "Қызметкеріміздің жеке деректері жарияланды",
        "Personal data of one of our people was published",
    ),
    (
        "say.other",
        "Другая атака",
        "Басқа шабуыл",
        "Another kind of attack",
    ),
    // The incident page.
    ("incident.started", "Началось", "Басталды", "Started"),
    ("incident.ended", "Закончилось", "Аяқталды", "Ended"),
    (
        "incident.created_by",
        "Кто сообщил",
        "Кім хабарлады",
        "Reported by",
    ),
    (
        "incident.recipients",
        "Получатели",
        "Алушылар",
        "Recipients",
    ),
    (
        "incident.timeline",
        "Ход событий",
        "Оқиғалар барысы",
        "Timeline",
    ),
    (
        "incident.no_updates",
        "Записей пока нет.",
        "Әзірге жазба жоқ.",
        "No entries yet.",
    ),
    ("incident.status_now", "статус", "мәртебесі", "status"),
    (
        "incident.add_update",
        "Новая запись",
        "Жаңа жазба",
        "New entry",
    ),
    (
        "incident.new_status",
        "Изменить статус",
        "Мәртебені өзгерту",
        "Change status",
    ),
    ("incident.status_same", "не менять", "өзгертпеу", "keep"),
    (
        "incident.save_update",
        "Добавить запись",
        "Жазба қосу",
        "Add entry",
    ),
    (
        "incident.indicators",
        "Индикаторы",
        "Индикаторлар",
        "Indicators",
    ),
    (
        "incident.no_indicators",
        "Индикаторов пока нет.",
        "Әзірге индикатор жоқ.",
        "No indicators yet.",
    ),
    ("incident.ind_kind", "Тип", "Түрі", "Kind"),
    ("incident.ind_value", "Значение", "Мәні", "Value"),
    ("incident.ind_count", "Сколько раз", "Неше рет", "Count"),
    (
        "incident.ind_seen",
        "Когда замечен",
        "Қашан байқалды",
        "Seen",
    ),
    (
        "incident.ind_hint",
        "IP-адрес, домен, ссылка, аккаунт (telegram:имя) и т. п.",
        "IP-мекенжай, домен, сілтеме, аккаунт (telegram:атауы) т. б.",
        "An IP address, domain, link, account (telegram:name) and so on.",
    ),
    (
        "incident.ind_more",
        "Показаны самые частые. Полный список в API:",
        "Ең жиілері көрсетілген. Толық тізім API-да:",
        "The most frequent are shown. The full list is in the API:",
    ),
    (
        "incident.add_indicator",
        "Добавить индикатор",
        "Индикатор қосу",
        "Add indicator",
    ),
    ("incident.attachments", "Файлы", "Файлдар", "Attachments"),
    (
        "incident.no_attachments",
        "Файлов пока нет.",
        "Әзірге файл жоқ.",
        "No attachments yet.",
    ),
    (
        "incident.upload",
        "Добавить файл (скриншот, лог, письмо)",
        "Файл қосу (скриншот, лог, хат)",
        "Add a file (screenshot, log, message)",
    ),
    (
        "incident.upload_hint",
        "Файл хранится как доказательство и не изменяется. Не больше",
        "Файл дәлел ретінде сақталады және өзгертілмейді. Ең көбі",
        "The file is kept as evidence and never changed. At most",
    ),
    ("incident.upload_submit", "Загрузить", "Жүктеу", "Upload"),
    // What an incident's impact means.
    (
        "impact.downtime_minutes",
        "Простой, минут",
        "Тоқтап тұру, минут",
        "Downtime, minutes",
    ),
    ("impact.requests", "Запросов", "Сұраныстар", "Requests"),
    (
        "impact.followers_added",
        "Ботов-подписчиков",
        "Бот-жазылушылар",
        "Bot followers",
    ),
    (
        "impact.comments",
        "Бот-комментариев или жалоб",
        "Бот-пікірлер не шағымдар",
        "Bot comments or complaints",
    ),
    // Settings.
    (
        "settings.title",
        "Настройки редакции",
        "Редакция баптаулары",
        "Outlet settings",
    ),
    ("settings.saved", "Сохранено.", "Сақталды.", "Saved."),
    (
        "settings.auto_tlp",
        "Кто видит атаки, записанные щитом",
        "Қалқан жазған шабуылдарды кім көреді",
        "Who sees attacks recorded by the shield",
    ),
    (
        "settings.auto_tlp_hint",
        "Щит сам создаёт инциденты из эпизодов атак; им даётся этот уровень.",
        "Қалқан шабуыл эпизодтарынан инциденттерді өзі жасайды; оларға осы деңгей беріледі.",
        "The shield files incidents from attack episodes by itself; they get this level.",
    ),
    (
        "settings.need_to_know",
        "Доверенные редакции (TLP:AMBER)",
        "Сенімді редакциялар (TLP:AMBER)",
        "Trusted outlets (TLP:AMBER)",
    ),
    (
        "settings.need_to_know_hint",
        "Эти редакции видят наши инциденты с уровнем TLP:AMBER.",
        "Бұл редакциялар біздің TLP:AMBER деңгейлі инциденттерімізді көреді.",
        "These outlets see our incidents marked TLP:AMBER.",
    ),
    (
        "settings.no_peers",
        "Других редакций пока нет.",
        "Басқа редакциялар әзірге жоқ.",
        "No other outlets yet.",
    ),
    ("settings.save", "Сохранить", "Сақтау", "Save"),
    ("settings.members", "Участники", "Қатысушылар", "Members"),
    ("settings.name", "Имя", "Аты", "Name"),
    ("settings.role", "Роль", "Рөлі", "Role"),
    ("settings.disabled", "отключён", "өшірілген", "disabled"),
    (
        "settings.add_member",
        "Добавить участника",
        "Қатысушы қосу",
        "Add a member",
    ),
    (
        "settings.password",
        "Начальный пароль",
        "Бастапқы құпиясөз",
        "Initial password",
    ),
    (
        "settings.password_hint",
        "Не короче 12 символов. Передайте его лично, не по почте.",
        "Кемінде 12 таңба. Поштамен емес, жеке беріңіз.",
        "At least 12 characters. Hand it over in person, not by e-mail.",
    ),
    ("settings.add", "Добавить", "Қосу", "Add"),
    // Errors.
    ("err.home", "На главную", "Басты бетке", "Home"),
    ("err.forbidden", "Нет доступа", "Рұқсат жоқ", "Not allowed"),
    (
        "err.forbidden_text",
        "У вас нет прав на это действие, или форма устарела: обновите страницу и попробуйте снова.",
        "Бұл әрекетке құқығыңыз жоқ, не форма ескірген: бетті жаңартып, қайталаңыз.",
        "You may not do this, or the form is stale: reload the page and try again.",
    ),
    (
        "err.not_found",
        "Страница не найдена",
        "Бет табылмады",
        "Page not found",
    ),
    (
        "err.not_found_text",
        "Такой страницы нет, или она вам недоступна.",
        "Мұндай бет жоқ, не ол сізге қолжетімсіз.",
        "There is no such page, or you may not see it.",
    ),
    (
        "err.throttled",
        "Слишком много попыток",
        "Әрекеттер тым көп",
        "Too many attempts",
    ),
    (
        "err.invalid",
        "Ошибка в данных",
        "Деректерде қате бар",
        "Invalid input",
    ),
    (
        "err.invalid_text",
        "Проверьте введённые данные.",
        "Енгізілген деректерді тексеріңіз.",
        "Please check what you entered.",
    ),
    (
        "err.conflict",
        "Уже существует",
        "Бұрыннан бар",
        "Already exists",
    ),
    (
        "err.conflict_text",
        "Такая запись уже есть.",
        "Мұндай жазба бұрыннан бар.",
        "Such a record exists already.",
    ),
    (
        "err.internal",
        "Внутренняя ошибка",
        "Ішкі қате",
        "Internal error",
    ),
    (
        "err.internal_text",
        "Что-то пошло не так на сервере. Попробуйте позже.",
        "Серверде бірдеңе дұрыс болмады. Кейінірек қайталаңыз.",
        "Something went wrong on the server. Try again later.",
    ),
    (
        "err.required",
        "Заполните это поле.",
        "Бұл өрісті толтырыңыз.",
        "Please fill this in.",
    ),
    (
        "err.empty",
        "Не может быть пустым.",
        "Бос болмауы керек.",
        "Must not be empty.",
    ),
    (
        "err.control",
        "Содержит недопустимые символы.",
        "Рұқсат етілмеген таңбалар бар.",
        "Contains characters that are not allowed.",
    ),
    (
        "err.no_outlet",
        "Такой редакции нет.",
        "Мұндай редакция жоқ.",
        "No such outlet.",
    ),
    (
        "err.negative",
        "Не может быть отрицательным.",
        "Теріс болмауы керек.",
        "Must not be negative.",
    ),
    (
        "err.number",
        "Введите целое число.",
        "Бүтін сан енгізіңіз.",
        "Enter a whole number.",
    ),
    (
        "err.date",
        "Введите дату (ГГГГ-ММ-ДД).",
        "Күнді енгізіңіз (ЖЖЖЖ-АА-КК).",
        "Enter a date (YYYY-MM-DD).",
    ),
    (
        "err.time",
        "Введите время (ЧЧ:ММ).",
        "Уақытты енгізіңіз (СС:ММ).",
        "Enter a time (HH:MM).",
    ),
    (
        "err.email",
        "Это не адрес электронной почты.",
        "Бұл электрондық пошта мекенжайы емес.",
        "Not an e-mail address.",
    ),
    (
        "err.email_taken",
        "Участник с таким e-mail уже есть.",
        "Мұндай e-mail-мен қатысушы бар.",
        "A member with this e-mail exists.",
    ),
    (
        "err.too_short",
        "Слишком коротко.",
        "Тым қысқа.",
        "Too short.",
    ),
    ("err.too_long", "Слишком длинно.", "Тым ұзын.", "Too long."),
    (
        "err.choose",
        "Выберите один из вариантов.",
        "Нұсқалардың бірін таңдаңыз.",
        "Choose one of the options.",
    ),
    (
        "err.red_needs_recipients",
        "Для TLP:RED отметьте хотя бы одну редакцию.",
        "TLP:RED үшін кемінде бір редакцияны белгілеңіз.",
        "For TLP:RED, tick at least one outlet.",
    ),
    (
        "err.no_file",
        "Выберите файл.",
        "Файлды таңдаңыз.",
        "Choose a file.",
    ),
    (
        "err.too_big",
        "Файл слишком большой.",
        "Файл тым үлкен.",
        "The file is too large.",
    ),
    // Publications: feeds and what provokes attacks (`feeds.rs`, `provoke.rs`).
    (
        "nav.provoke",
        "Что провоцирует атаки",
        "Шабуылға не түрткі болады",
        "What provokes attacks",
    ),
    (
        "provoke.title",
        "Что провоцирует атаки",
        "Шабуылға не түрткі болады",
        "What provokes attacks",
    ),
    (
        "provoke.intro",
        "Теги и слова заголовков и анонсов, которые чаще обычного встречаются в публикациях перед атаками, с доверительным интервалом и примерами. Учитываются только инциденты, которые вам видны.",
        "Шабуылдар алдындағы жарияланымдарда әдеттегіден жиі кездесетін тегтер, тақырып пен аңдатпа сөздері, сенім аралығымен және мысалдарымен. Тек сізге көрінетін инциденттер ескеріледі.",
        "Tags and words of titles and summaries found more often than usual in publications before attacks, with a confidence interval and examples. Only incidents you can see are counted.",
    ),
    (
        "provoke.window",
        "Окно перед атакой, часов",
        "Шабуыл алдындағы терезе, сағат",
        "Window before an attack, hours",
    ),
    (
        "provoke.window_hint",
        "Если атаки начинаются в течение часов после публикации, окно в 24 часа даёт более чёткий результат.",
        "Шабуыл жарияланымнан кейін бірнеше сағат ішінде басталса, 24 сағаттық терезе нақтырақ нәтиже береді.",
        "When attacks start within hours of a publication, a 24-hour window gives a sharper result.",
    ),
    ("provoke.from", "С даты", "Басталу күні", "From"),
    ("provoke.to", "По дату", "Аяқталу күні", "To"),
    ("provoke.show", "Показать", "Көрсету", "Show"),
    (
        "provoke.all_outlets",
        "Все редакции",
        "Барлық редакциялар",
        "All outlets",
    ),
    (
        "provoke.incidents",
        "Инцидентов",
        "Инциденттер",
        "Incidents",
    ),
    (
        "provoke.publications",
        "Публикаций",
        "Жарияланымдар",
        "Publications",
    ),
    (
        "provoke.before_attacks",
        "Перед атаками",
        "Шабуылдар алдында",
        "Before attacks",
    ),
    (
        "provoke.tested",
        "Проверено терминов",
        "Тексерілген терминдер",
        "Terms tested",
    ),
    (
        "provoke.significant",
        "Значимые связи",
        "Маңызды байланыстар",
        "Significant links",
    ),
    (
        "provoke.none",
        "Значимых связей не найдено: ни один тег или слово не встречается перед атаками заметно чаще обычного.",
        "Маңызды байланыс табылмады: бірде-бір тег не сөз шабуылдар алдында әдеттегіден айтарлықтай жиі кездеспейді.",
        "No significant link found: no tag or word appears before attacks notably more often than usual.",
    ),
    ("provoke.lift", "Превышение", "Асып түсу", "Lift"),
    ("provoke.vs", "против", "қарсы", "vs"),
    (
        "provoke.evidence",
        "Инцидентов с такими публикациями перед ними",
        "Алдында осындай жарияланымдар болған инциденттер",
        "Incidents preceded by such publications",
    ),
    (
        "provoke.lead",
        "до атаки (ч:мин)",
        "шабуылға дейін (сағ:мин)",
        "before the attack (h:min)",
    ),
    (
        "provoke.others",
        "Сильнейшие незначимые",
        "Ең күшті, бірақ маңызды емес",
        "Strongest, not significant",
    ),
    ("provoke.term", "Термин", "Термин", "Term"),
    (
        "provoke.all",
        "Все публикации",
        "Барлық жарияланымдар",
        "All publications",
    ),
    (
        "provoke.method",
        "Как это считается",
        "Қалай есептеледі",
        "How this is computed",
    ),
    (
        "provoke.method_text",
        "Публикация считается «перед атакой», если вышла в окне до начала видимого вам инцидента своей редакции. Для каждого тега и слова заголовка или анонса (каждое считается один раз на публикацию): превышение = наблюдаемое число таких публикаций перед атаками / ожидаемое по обычной доле в выпуске редакции; 95% интервал — пуассоновский (Byar); p-значение — точный гипергеометрический тест; поправка Бенджамини–Хохберга на все проверенные термины. Значимо, если поправленное значение ≤ 0,05, нижняя граница интервала > 1 и публикаций перед атаками не меньше минимума.",
        "Жарияланым, егер өз редакциясының сізге көрінетін инциденті басталғанға дейінгі терезеде шықса, «шабуыл алдында» деп саналады. Әр тег, тақырып не аңдатпа сөзі үшін (әрқайсысы бір жарияланымда бір рет саналады): асып түсу = шабуылдар алдындағы осындай жарияланымдардың байқалған саны / редакцияның әдеттегі үлесі бойынша күтілетін саны; 95% аралық — Пуассон (Byar); p-мәні — дәл гипергеометриялық тест; барлық тексерілген терминдерге Бенджамини–Хохберг түзетуі. Түзетілген мән ≤ 0,05, аралықтың төменгі шегі > 1 және шабуыл алдындағы жарияланымдар ең азынан кем болмаса, маңызды.",
        "A publication is 'before an attack' when it appeared in the window before the start of an incident of its outlet that you can see. For each tag and word of a title or summary (each counted once per publication): lift = observed such publications before attacks / expected from its usual share of the outlet's output; 95% interval: Poisson (Byar); p-value: exact hypergeometric test; Benjamini–Hochberg correction over all terms tested. Significant when the adjusted value is at most 0.05, the interval's lower end is above 1 and at least the minimum number of publications before attacks carry it.",
    ),
    (
        "provoke.min_support",
        "минимум публикаций",
        "жарияланымдардың ең аз саны",
        "minimum publications",
    ),
    ("provoke.kind_tag", "тег", "тег", "tag"),
    ("provoke.kind_keyword", "слово", "сөз", "word"),
    (
        "feeds.title",
        "RSS/Atom-ленты редакции",
        "Редакцияның RSS/Atom таспалары",
        "The outlet's RSS/Atom feeds",
    ),
    (
        "feeds.intro",
        "Публикации из этих лент собираются автоматически (раз в 15 минут) и сопоставляются с атаками. Ссылки, добавленные вручную, не перезаписываются.",
        "Осы таспалардағы жарияланымдар автоматты түрде жиналады (15 минут сайын) және шабуылдармен салыстырылады. Қолмен қосылған сілтемелер қайта жазылмайды.",
        "Publications from these feeds are collected automatically (every 15 minutes) and compared with attacks. Links added by hand are not overwritten.",
    ),
    (
        "feeds.none",
        "Лент пока нет.",
        "Әзірге таспа жоқ.",
        "No feeds yet.",
    ),
    (
        "feeds.last_poll",
        "Последний опрос",
        "Соңғы сұрау",
        "Last poll",
    ),
    ("feeds.status", "Состояние", "Күйі", "Status"),
    ("feeds.added", "добавлена", "қосылды", "added"),
    (
        "feeds.never",
        "ещё не опрашивалась",
        "әлі сұралмаған",
        "not polled yet",
    ),
    ("feeds.error", "Ошибка", "Қате", "Error"),
    (
        "feeds.last_ok",
        "последний успешный опрос",
        "соңғы сәтті сұрау",
        "last successful poll",
    ),
    ("feeds.ok", "работает", "жұмыс істеп тұр", "working"),
    ("feeds.remove", "Удалить", "Жою", "Remove"),
    (
        "feeds.add",
        "Адрес ленты (http:// или https://)",
        "Таспа мекенжайы (http:// немесе https://)",
        "Feed address (http:// or https://)",
    ),
    (
        "feeds.hint",
        "Например, https://example.kz/rss. Не больше лент на редакцию:",
        "Мысалы, https://example.kz/rss. Бір редакцияға ең көп таспа саны:",
        "For example, https://example.kz/rss. Most feeds per outlet:",
    ),
    (
        "feeds.add_submit",
        "Добавить ленту",
        "Таспа қосу",
        "Add the feed",
    ),
    (
        "feeds.duplicate",
        "Эта лента уже добавлена.",
        "Бұл таспа бұрын қосылған.",
        "This feed is already listed.",
    ),
    (
        "feeds.manage",
        "Ленты публикаций",
        "Жарияланым таспалары",
        "Publication feeds",
    ),
    (
        "incident.preceding",
        "Публикации за 72 часа до атаки",
        "Шабуылға дейінгі 72 сағаттағы жарияланымдар",
        "Publications in the 72 hours before the attack",
    ),
    (
        "incident.no_preceding",
        "Публикаций редакции за 72 часа до атаки нет.",
        "Шабуылға дейінгі 72 сағатта редакцияның жарияланымы жоқ.",
        "No publications of the outlet in the 72 hours before the attack.",
    ),
    (
        "incident.pub_title",
        "Публикация",
        "Жарияланым",
        "Publication",
    ),
    ("incident.pub_when", "Вышла", "Шыққан уақыты", "Published"),
];

fn table() -> &'static HashMap<&'static str, [&'static str; 3]> {
    static TABLE: OnceLock<HashMap<&'static str, [&'static str; 3]>> = OnceLock::new();
    TABLE.get_or_init(|| {
        MESSAGES
            .iter()
            // The map's words live with the map (`map/messages.rs`).
            .chain(crate::map::messages::MESSAGES.iter())
            // The campaigns page's words live with it (`web/campaigns.rs`).
            .chain(crate::web::campaigns::MESSAGES.iter())
            .map(|(k, ru, kk, en)| (*k, [*ru, *kk, *en]))
            .collect()
    })
}

/// The text of a message key in a language. An unknown key (a bug the tests catch) shows as a
/// visible placeholder rather than failing the page.
pub fn t(lang: Lang, key: &str) -> &'static str {
    match table().get(key) {
        Some(texts) => match lang {
            Lang::Ru => texts[0],
            Lang::Kk => texts[1],
            Lang::En => texts[2],
        },
        None => {
            tracing::warn!(key, "missing dashboard message");
            "[?]"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_key_has_three_non_empty_texts_and_is_unique() {
        let mut seen = HashSet::new();
        for (k, ru, kk, en) in MESSAGES {
            assert!(seen.insert(*k), "duplicate key {k}");
            for (lang, s) in [("ru", ru), ("kk", kk), ("en", en)] {
                assert!(!s.trim().is_empty(), "{k} has no {lang} text");
            }
            // Russian and Kazakh texts are in Cyrillic: a Latin-only text is a forgotten copy.
            let cyrillic = |s: &str| s.chars().any(|c| ('\u{400}'..='\u{4ff}').contains(&c));
            let latin_only_ok = ["role.editor"].contains(k);
            if !latin_only_ok && en.chars().any(|c| c.is_alphabetic()) {
                assert!(cyrillic(ru), "{k}: Russian text has no Cyrillic");
                assert!(cyrillic(kk), "{k}: Kazakh text has no Cyrillic");
            }
        }
    }

    #[test]
    fn kazakh_uses_its_own_letters_somewhere() {
        // The Kazakh table is not a copy of the Russian one.
        let kazakh_letters = ['ә', 'ғ', 'қ', 'ң', 'ө', 'ұ', 'ү', 'һ', 'і'];
        let n = MESSAGES
            .iter()
            .filter(|m| m.2.chars().any(|c| kazakh_letters.contains(&c)))
            .count();
        assert!(
            n > MESSAGES.len() / 2,
            "only {n} Kazakh texts use Kazakh letters"
        );
    }

    /// Every `p.t("…")` in the templates and every message key literal in `web.rs` exists.
    #[test]
    fn every_key_the_pages_use_exists() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let prefixes: HashSet<&str> = MESSAGES
            .iter()
            .chain(crate::map::messages::MESSAGES.iter())
            .chain(crate::web::campaigns::MESSAGES.iter())
            .filter_map(|m| m.0.split_once('.').map(|(p, _)| p))
            .collect();
        let mut sources = Vec::new();
        for e in std::fs::read_dir(dir.join("templates")).unwrap() {
            let p = e.unwrap().path();
            sources.push((
                p.display().to_string(),
                std::fs::read_to_string(&p).unwrap(),
            ));
        }
        for file in ["src/web.rs", "src/map/pages.rs", "src/web/campaigns.rs"] {
            let web = dir.join(file);
            sources.push((
                web.display().to_string(),
                std::fs::read_to_string(&web).unwrap(),
            ));
        }
        let mut checked = 0;
        for (name, text) in &sources {
            // In templates, every `t("…")` call; in Rust, every string literal shaped like
            // `prefix.name` with a known prefix.
            let lits: Vec<&str> = if name.ends_with(".html") {
                text.split("t(\"")
                    .skip(1)
                    .filter_map(|s| s.split('"').next())
                    .collect()
            } else {
                text.split('"').skip(1).step_by(2).collect()
            };
            for lit in lits {
                let Some((p, rest)) = lit.split_once('.') else {
                    continue;
                };
                let shaped = !rest.is_empty()
                    && rest.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    && p.chars().all(|c| c.is_ascii_lowercase());
                if shaped && prefixes.contains(p) && rest != "html" {
                    assert!(table().contains_key(lit), "{name} uses unknown key {lit}");
                    checked += 1;
                }
            }
        }
        assert!(
            checked > 100,
            "only {checked} keys found: is the scan broken?"
        );
        assert_eq!(t(Lang::Ru, "login.password"), "Пароль");
        assert_eq!(t(Lang::Kk, "login.password"), "Құпиясөз");
        assert_eq!(t(Lang::En, "login.password"), "Password");
    }

    #[test]
    fn language_codes_round_trip() {
        for l in Lang::ALL {
            assert_eq!(Lang::parse(l.code()), Some(*l));
        }
        assert_eq!(Lang::parse("de"), None);
    }
}
