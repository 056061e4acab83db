//! Command line: `blockwire-linux-tap [--tap NAME] [--ip ADDR/PREFIX]
//! [--gw ADDR] [--port N] [--size SIZE] [--mac MAC] [--conns N]`.

use std::net::Ipv4Addr;

/// What to serve and where.
#[derive(Debug)]
pub struct Args {
    pub tap: String,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub port: u16,
    pub size: usize,
    pub mac: [u8; 6],
    /// Connections served at once (one socket and slot each).
    pub conns: usize,
}

pub const USAGE: &str = "usage: blockwire-linux-tap [--tap NAME] [--ip ADDR/PREFIX] [--gw ADDR] \
[--port N] [--size SIZE[K|M|G]] [--mac XX:XX:XX:XX:XX:XX] [--conns N]
defaults: --tap bwtap0 --ip 10.213.0.2/24 --port 10809 --size 64M --mac 02:62:77:00:00:02 --conns 8";

impl Args {
    pub fn parse(mut it: impl Iterator<Item = String>) -> Result<Self, String> {
        let mut a = Args {
            tap: "bwtap0".into(),
            ip: Ipv4Addr::new(10, 213, 0, 2),
            prefix: 24,
            gateway: None,
            port: 10809,
            size: 64 << 20,
            // Locally administered, so it cannot clash with real hardware.
            mac: [0x02, 0x62, 0x77, 0, 0, 2],
            // Twice what nbdcopy or QEMU open on a multi-conn export.
            conns: 8,
        };
        while let Some(flag) = it.next() {
            let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--tap" => a.tap = value()?,
                "--ip" => {
                    let v = value()?;
                    let (ip, prefix) = v.split_once('/').unwrap_or((&v, "24"));
                    a.ip = ip.parse().map_err(|e| format!("--ip {v}: {e}"))?;
                    a.prefix = prefix
                        .parse()
                        .ok()
                        .filter(|p| *p <= 32)
                        .ok_or_else(|| format!("--ip {v}: bad prefix"))?;
                }
                "--gw" => {
                    let v = value()?;
                    a.gateway = Some(v.parse().map_err(|e| format!("--gw {v}: {e}"))?);
                }
                "--port" => {
                    let v = value()?;
                    a.port = v.parse().map_err(|e| format!("--port {v}: {e}"))?;
                }
                "--size" => {
                    let v = value()?;
                    a.size = parse_size(&v).ok_or_else(|| format!("--size {v}: bad size"))?;
                }
                "--mac" => {
                    let v = value()?;
                    a.mac = parse_mac(&v).ok_or_else(|| format!("--mac {v}: bad address"))?;
                }
                "--conns" => {
                    let v = value()?;
                    a.conns = v
                        .parse()
                        .ok()
                        .filter(|&n| n > 0)
                        .ok_or_else(|| format!("--conns {v}: not a positive count"))?;
                }
                "-h" | "--help" => return Err(USAGE.into()),
                _ => return Err(format!("unknown argument {flag}\n{USAGE}")),
            }
        }
        Ok(a)
    }
}

/// `64M`, `512K`, `1G`, or plain bytes.
pub fn parse_size(s: &str) -> Option<usize> {
    let (num, shift) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 10),
        b'M' | b'm' => (&s[..s.len() - 1], 20),
        b'G' | b'g' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let n: usize = num.parse().ok()?;
    n.checked_mul(1 << shift).filter(|&n| n > 0)
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64M"), Some(64 << 20));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("0"), None);
        assert_eq!(parse_size("xM"), None);
    }

    #[test]
    fn flags() {
        let a = Args::parse(
            [
                "--ip",
                "10.1.2.3/16",
                "--size",
                "1M",
                "--mac",
                "02:00:00:00:00:09",
                "--conns",
                "3",
            ]
            .into_iter()
            .map(String::from),
        )
        .unwrap();
        assert_eq!(
            (a.ip, a.prefix, a.size),
            (Ipv4Addr::new(10, 1, 2, 3), 16, 1 << 20)
        );
        assert_eq!(a.mac[5], 9);
        assert_eq!(a.conns, 3);
        let zero = Args::parse(["--conns", "0"].into_iter().map(String::from));
        assert!(zero.unwrap_err().contains("--conns 0"));
    }
}
