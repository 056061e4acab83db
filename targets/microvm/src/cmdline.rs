//! Kernel command line: `ip=ADDR/PREFIX gw=ADDR port=N size=SIZE conns=N`, plus
//! (with the `netboot` feature) `server=ADDR:PORT` and `export=NAME`.
//! Unknown words (QEMU's own `virtio_mmio.device=...`) are ignored.

use smoltcp::wire::Ipv4Address;

#[derive(Clone, Copy, Debug)]
pub struct Options<'a> {
    pub ip: Ipv4Address,
    pub prefix: u8,
    pub gateway: Option<Ipv4Address>,
    pub port: u16,
    pub size: u64,
    /// Connections served at once (`conns=N`, at least 1).
    pub conns: usize,
    pub server: (Ipv4Address, u16),
    pub export: &'a str,
}

impl Default for Options<'_> {
    fn default() -> Self {
        Self {
            // QEMU's user network: guest 10.0.2.15, gateway (and host) 10.0.2.2.
            ip: Ipv4Address::new(10, 0, 2, 15),
            prefix: 24,
            gateway: None,
            port: 10809,
            size: 64 << 20,
            // Twice what nbdcopy or QEMU open on a multi-conn export; each
            // costs its TCP buffers (256 KiB) plus ~10 KiB of state.
            conns: 8,
            server: (Ipv4Address::new(10, 0, 2, 2), 10809),
            export: "",
        }
    }
}

/// Parse `cmdline`; a malformed value is reported by name and leaves the
/// default in place.
pub fn parse<'a>(cmdline: &'a str, mut bad: impl FnMut(&'a str)) -> Options<'a> {
    let mut o = Options::default();
    for word in cmdline.split_ascii_whitespace() {
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        let ok = match key {
            "ip" => {
                let (addr, prefix) = value.split_once('/').unwrap_or((value, "24"));
                match (addr.parse(), prefix.parse::<u8>()) {
                    (Ok(a), Ok(p)) if p <= 32 => {
                        o.ip = a;
                        o.prefix = p;
                        true
                    }
                    _ => false,
                }
            }
            "gw" => value.parse().map(|a| o.gateway = Some(a)).is_ok(),
            "port" => value.parse().map(|p| o.port = p).is_ok(),
            "size" => parse_size(value).map(|s| o.size = s).is_some(),
            "conns" => match value.parse::<usize>() {
                Ok(n) if n > 0 => {
                    o.conns = n;
                    true
                }
                _ => false,
            },
            "server" => {
                let (addr, port) = value.split_once(':').unwrap_or((value, "10809"));
                match (addr.parse(), port.parse()) {
                    (Ok(a), Ok(p)) => {
                        o.server = (a, p);
                        true
                    }
                    _ => false,
                }
            }
            "export" => {
                o.export = value;
                true
            }
            _ => true,
        };
        if !ok {
            bad(word);
        }
    }
    o
}

/// `64M`, `512K`, `1G`, or bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let (num, shift) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 10),
        b'M' | b'm' => (&s[..s.len() - 1], 20),
        b'G' | b'g' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    num.parse::<u64>()
        .ok()?
        .checked_mul(1 << shift)
        .filter(|&n| n > 0)
}
