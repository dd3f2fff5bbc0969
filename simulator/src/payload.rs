//! Realistic status text for simulated instruments.
//!
//! A clinical analyser reports the same few dozen readings over and over, and they
//! drift slowly: incubator temperature wanders by a tenth of a degree, reagent levels
//! fall a percent every few hundred reports, counters tick. The generator imitates
//! that, so that compression and storage figures measured with the simulator resemble
//! what real instruments produce (neither random bytes nor a constant string).
//!
//! An alarm carries its name and its error code (`alarm=CLOT_DETECTED;code=E412;...;err=E412`),
//! as analysers report them. For scripted streams (the data center's trigger tests) a
//! reading can be held at a value ([`StatusText::hold`]: reagent at 8%, temperature out of
//! range) and the alarm fixed to one kind ([`StatusText::fix_alarm`]).

use std::collections::BTreeMap;

/// The alarms a simulated instrument raises: name and error code.
pub const ALARMS: [(&str, &str); 5] = [
    ("TEMP_HIGH", "E101"),
    ("REAGENT_LOW", "E205"),
    ("DOOR_OPEN", "E310"),
    ("CLOT_DETECTED", "E412"),
    ("PRESSURE_LOW", "E518"),
];

/// The readings of a status report, in the order rendered (what [`StatusText::hold`] accepts).
pub const READINGS: [&str; 20] = [
    "temp",
    "incubator",
    "cuvette_temp",
    "reagent_A",
    "reagent_B",
    "reagent_C",
    "reagent_D",
    "wash",
    "waste",
    "door",
    "lid",
    "err",
    "state",
    "tests_done",
    "queue",
    "lamp_h",
    "pressure",
    "fan",
    "probe",
    "fw",
];

/// A deterministic generator of `key=value;...` status payloads.
#[derive(Debug, Clone)]
pub struct StatusText {
    rng: u64,
    temp: f64,
    incubator: f64,
    cuvette: f64,
    pressure: f64,
    reagent: [u32; 4],
    wash: u32,
    waste: u32,
    fan: u32,
    tests_done: u64,
    queue: u32,
    lamp_hours: u32,
    modules: [f64; 8],
    door_open: u32,
    started: std::time::Instant,
    held: BTreeMap<String, String>,
    alarm: Option<usize>,
}

impl StatusText {
    /// A generator seeded from the instrument's serial (same serial, same sequence).
    pub fn new(serial: &str) -> StatusText {
        let mut seed: u64 = 0xcbf2_9ce4_8422_2325;
        for b in serial.bytes() {
            seed = (seed ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        let mut g = StatusText {
            rng: seed | 1,
            temp: 37.0,
            incubator: 37.0,
            cuvette: 37.1,
            pressure: 101.3,
            reagent: [0; 4],
            wash: 0,
            waste: 0,
            fan: 2400,
            tests_done: 0,
            queue: 0,
            lamp_hours: 0,
            modules: [36.8; 8],
            door_open: 0,
            started: std::time::Instant::now(),
            held: BTreeMap::new(),
            alarm: None,
        };
        for i in 0..g.reagent.len() {
            g.reagent[i] = 40 + (g.next_u64() % 60) as u32;
        }
        g.wash = 50 + (g.next_u64() % 50) as u32;
        g.waste = (g.next_u64() % 30) as u32;
        g.tests_done = g.next_u64() % 100_000;
        g.lamp_hours = 500 + (g.next_u64() % 3000) as u32;
        g
    }

    fn next_u64(&mut self) -> u64 {
        // xorshift64*: tiny, deterministic, good enough for sensor noise.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// True once every `n` calls on average.
    fn one_in(&mut self, n: u64) -> bool {
        self.next_u64() % n == 0
    }

    fn walk(&mut self, v: f64, step: f64, lo: f64, hi: f64) -> f64 {
        let d = match self.next_u64() % 3 {
            0 => -step,
            1 => 0.0,
            _ => step,
        };
        (v + d).clamp(lo, hi)
    }

    /// Holds a reading at `value` (rendered as given, unit included: `"8%"`, `"38.9"`) in
    /// every following report until [`StatusText::release`]. Returns false, holding nothing,
    /// for a key that is not one of [`READINGS`].
    pub fn hold(&mut self, key: &str, value: &str) -> bool {
        if !READINGS.contains(&key) {
            return false;
        }
        self.held.insert(key.to_owned(), value.to_owned());
        true
    }

    /// Lets a held reading follow the simulation again.
    pub fn release(&mut self, key: &str) {
        self.held.remove(key);
    }

    /// Makes every following alarm the one named (one of [`ALARMS`]); `None` goes back to
    /// a random one. Returns false, changing nothing, for an unknown name.
    pub fn fix_alarm(&mut self, name: Option<&str>) -> bool {
        match name {
            None => self.alarm = None,
            Some(n) => match ALARMS.iter().position(|(a, _)| *a == n) {
                Some(i) => self.alarm = Some(i),
                None => return false,
            },
        }
        true
    }

    /// Advances the simulated instrument by one report and renders it, padded or cut
    /// to exactly `size` bytes. `alarm` renders an alarm text instead of routine status.
    pub fn next(&mut self, alarm: bool, size: usize) -> Vec<u8> {
        self.advance();
        let mut s = String::with_capacity(size + 64);
        let mut err = "0";
        if alarm {
            let i = match self.alarm {
                Some(i) => i,
                None => (self.next_u64() % ALARMS.len() as u64) as usize,
            };
            let (name, code) = ALARMS[i];
            err = code;
            s.push_str(&format!("alarm={name};code={code};severity=high;"));
        }
        let state = if self.door_open > 0 { "PAUSED" } else { "RUNNING" };
        let door = if self.door_open > 0 { "open" } else { "closed" };
        let mut status = format!(
            "temp={:.1};incubator={:.1};cuvette_temp={:.1};reagent_A={}%;reagent_B={}%;reagent_C={}%;\
             reagent_D={}%;wash={}%;waste={}%;door={door};lid=closed;err={err};state={state};tests_done={};\
             queue={};lamp_h={};pressure={:.1}kPa;fan={}rpm;probe=ok;fw=4.2.1;uptime={}",
            self.temp,
            self.incubator,
            self.cuvette,
            self.reagent[0],
            self.reagent[1],
            self.reagent[2],
            self.reagent[3],
            self.wash,
            self.waste,
            self.tests_done,
            self.queue,
            self.lamp_hours,
            self.pressure,
            self.fan,
            self.started.elapsed().as_secs(),
        );
        if !self.held.is_empty() {
            status = status
                .split(';')
                .map(|kv| match kv.split_once('=').and_then(|(k, _)| self.held.get_key_value(k)) {
                    Some((k, v)) => format!("{k}={v}"),
                    None => kv.to_owned(),
                })
                .collect::<Vec<_>>()
                .join(";");
        }
        s.push_str(&status);
        let mut i = 0usize;
        while s.len() < size {
            let m = i % self.modules.len();
            s.push_str(&format!(
                ";mod{}_{}_t={:.1};mod{}_{}_st=ok",
                i / self.modules.len() + 1,
                m + 1,
                self.modules[m],
                i / self.modules.len() + 1,
                m + 1
            ));
            i += 1;
        }
        let mut bytes = s.into_bytes();
        bytes.truncate(size);
        bytes
    }

    fn advance(&mut self) {
        if self.one_in(20) {
            self.temp = self.walk(self.temp, 0.1, 36.0, 38.5);
        }
        if self.one_in(40) {
            self.incubator = self.walk(self.incubator, 0.1, 36.5, 37.5);
        }
        if self.one_in(30) {
            self.cuvette = self.walk(self.cuvette, 0.1, 36.5, 37.7);
        }
        if self.one_in(50) {
            self.pressure = self.walk(self.pressure, 0.1, 99.0, 103.0);
        }
        if self.one_in(25) {
            self.fan = (self.fan as f64 + (self.next_u64() % 3) as f64 * 20.0 - 20.0).clamp(2000.0, 2800.0) as u32;
        }
        for i in 0..self.reagent.len() {
            if self.one_in(400) {
                self.reagent[i] = if self.reagent[i] <= 5 { 100 } else { self.reagent[i] - 1 };
            }
        }
        if self.one_in(300) {
            self.wash = if self.wash <= 5 { 100 } else { self.wash - 1 };
        }
        if self.one_in(300) {
            self.waste = if self.waste >= 95 { 0 } else { self.waste + 1 };
        }
        if self.one_in(8) {
            self.tests_done += 1;
        }
        if self.one_in(15) {
            self.queue = (self.next_u64() % 12) as u32;
        }
        if self.one_in(5000) {
            self.lamp_hours += 1;
        }
        for m in 0..self.modules.len() {
            if self.one_in(60) {
                self.modules[m] = self.walk(self.modules[m], 0.1, 35.5, 38.0);
            }
        }
        if self.door_open > 0 {
            self.door_open -= 1;
        } else if self.one_in(3000) {
            self.door_open = 20;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_size_and_realistic_text() {
        let mut g = StatusText::new("DXI-0001");
        for size in [0, 1, 50, 200, 1000, 5000] {
            let p = g.next(false, size);
            assert_eq!(p.len(), size);
        }
        let p = String::from_utf8(g.next(false, 200)).unwrap();
        assert!(p.starts_with("temp=3"), "{p}");
        assert!(p.contains(";reagent_A=") && p.contains(";err=0;"), "{p}");
        let a = String::from_utf8(g.next(true, 200)).unwrap();
        assert!(a.starts_with("alarm="), "{a}");
        let (name, code) = ALARMS.iter().find(|(n, _)| a.starts_with(&format!("alarm={n};"))).unwrap();
        assert!(a.contains(&format!(";code={code};")) && a.contains(&format!(";err={code};")), "{name}: {a}");
    }

    #[test]
    fn held_readings_and_fixed_alarms() {
        let mut g = StatusText::new("DXI-0003");
        assert!(g.hold("reagent_A", "8%"));
        assert!(g.hold("temp", "38.9"));
        assert!(!g.hold("nonsense", "1"), "only readings the instrument reports");
        assert!(g.fix_alarm(Some("CLOT_DETECTED")));
        assert!(!g.fix_alarm(Some("MELTDOWN")));
        for _ in 0..50 {
            let p = String::from_utf8(g.next(false, 300)).unwrap();
            assert!(p.starts_with("temp=38.9;") && p.contains(";reagent_A=8%;"), "{p}");
            let a = String::from_utf8(g.next(true, 300)).unwrap();
            assert!(a.starts_with("alarm=CLOT_DETECTED;code=E412;severity=high;temp=38.9;"), "{a}");
        }
        g.release("temp");
        g.fix_alarm(None);
        let p = String::from_utf8(g.next(false, 300)).unwrap();
        assert!(!p.contains("temp=38.9;") && p.contains(";reagent_A=8%;"), "{p}");
    }

    #[test]
    fn consecutive_reports_differ_little() {
        let mut g = StatusText::new("DXI-0002");
        let a = g.next(false, 200);
        let b = g.next(false, 200);
        let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
        assert!(same > 150, "only {same} of 200 bytes unchanged");
    }
}
