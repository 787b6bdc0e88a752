-- The built-in incident kinds. A deployment adds its own with `qalqan atlas kind add`.
INSERT INTO incident_kinds (code, name_ru, name_kk, name_en, builtin) VALUES
('http_flood', 'HTTP-флуд / DDoS', 'HTTP-флуд / DDoS', 'HTTP flood / DDoS', 1),
('unreachable', 'Недоступность из страны', 'Елден қолжетімсіздік', 'Unreachable from the country', 1),
('bot_followers', 'Накрутка ботов-подписчиков', 'Бот-жазылушылар', 'Bot followers', 1),
('bot_comments', 'Бот-комментарии', 'Бот-пікірлер', 'Bot comments', 1),
('threat_comments', 'Угрозы в комментариях', 'Пікірлердегі қоқан-лоқы', 'Threat comments', 1),
('mass_complaints', 'Массовые жалобы и блокировка аккаунта', 'Жаппай шағым және аккаунтты бұғаттау', 'Mass complaints leading to account blocking', 1),
('account_takeover', 'Попытка захвата аккаунта', 'Аккаунтты басып алу әрекеті', 'Account takeover attempt', 1),
('phishing', 'Фишинг', 'Фишинг', 'Phishing', 1),
('intrusion', 'Попытка взлома сервера или почты', 'Серверді не поштаны бұзу әрекеті', 'Server or mail intrusion attempt', 1),
('defacement', 'Дефейс сайта', 'Сайтты бүлдіру (дефейс)', 'Defacement', 1),
('doxxing', 'Доксинг', 'Доксинг', 'Doxxing', 1),
('other', 'Другое', 'Басқа', 'Other', 1);
