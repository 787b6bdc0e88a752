//! The shield's handling of a request head: arbitrary bytes are parsed as an HTTP/1.1 request
//! head (with `httparse`, the parser hyper uses), turned into `http` types the way hyper would,
//! then run through route classification, cache-key normalisation, X-Forwarded-For walking and
//! the rewrite of the request for the origin. Nothing may panic.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use qalqan_shield::state::Runtime;

fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        let text = format!(
            "{}\n[client]\ntrusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\"]\n",
            "[origin]\nurl = \"http://127.0.0.1:9\"\n[[listen]]\naddress = \"127.0.0.1:0\"\n"
        );
        let cfg = qalqan_shield::RawConfig::from_toml(&text).expect("fuzz config is valid");
        Runtime::new(cfg)
    })
}

fuzz_target!(|data: &[u8]| {
    let tls = data.first().is_some_and(|b| b & 1 == 1);
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = req.parse(data) else {
        return;
    };
    let (Some(method), Some(path)) = (req.method, req.path) else {
        return;
    };
    let Ok(method) = http::Method::from_bytes(method.as_bytes()) else {
        return;
    };
    let Ok(uri) = path.parse::<http::Uri>() else {
        return;
    };
    let mut b = http::Request::builder().method(method).uri(uri);
    for h in req.headers.iter() {
        let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(h.name.as_bytes()),
            http::HeaderValue::from_bytes(h.value),
        ) else {
            return;
        };
        b = b.header(n, v);
    }
    let Ok(r) = b.body(()) else { return };
    let (mut parts, ()) = r.into_parts();
    qalqan_shield::proxy::fuzz_request_head(runtime(), &mut parts, tls);
});
