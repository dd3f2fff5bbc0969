//! The FIPS gate: rapd does no network I/O unless OpenSSL runs with the FIPS provider
//! as its only source of algorithms.
//!
//! [`activate`] points OpenSSL at the configured FIPS configuration before any other
//! OpenSSL call, then [`check`] proves the resulting state: the fips provider is loaded
//! and in its operational state (its power-on self-tests, which the module runs when it
//! is loaded, passed, and it has not entered the error state since), `fips=yes` is the
//! default property, no provider but
//! `fips` and `base` is active, MD5 and ChaCha20-Poly1305 are refused, SHA-256 and
//! AES-256-GCM give the known answers. There is no switch to skip it.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};

use openssl::hash::{hash, MessageDigest};
use openssl::symm::{encrypt_aead, Cipher};
use serde::Serialize;

#[allow(non_camel_case_types)]
type OSSL_PROVIDER = c_void;

extern "C" {
    fn OSSL_PROVIDER_available(ctx: *mut c_void, name: *const c_char) -> c_int;
    fn OSSL_PROVIDER_do_all(
        ctx: *mut c_void,
        cb: extern "C" fn(provider: *mut OSSL_PROVIDER, cbdata: *mut c_void) -> c_int,
        cbdata: *mut c_void,
    ) -> c_int;
    fn OSSL_PROVIDER_get0_name(prov: *const OSSL_PROVIDER) -> *const c_char;
    fn OSSL_PROVIDER_get_params(prov: *const OSSL_PROVIDER, params: *mut OsslParam) -> c_int;
    fn EVP_default_properties_is_fips_enabled(ctx: *mut c_void) -> c_int;
}

/// OpenSSL's `OSSL_PARAM` (core.h).
#[repr(C)]
struct OsslParam {
    key: *const c_char,
    data_type: u32,
    data: *mut c_void,
    data_size: usize,
    return_size: usize,
}
const OSSL_PARAM_INTEGER: u32 = 1;
const OSSL_PARAM_UNMODIFIED: usize = usize::MAX;

/// The provider's `status` parameter: 1 while it is operational. For the FIPS provider
/// that means its self-tests (run by the module itself when it is loaded, before it
/// offers any algorithm) passed and it is not in the error state. None if the provider
/// does not report it.
fn provider_status(prov: *const OSSL_PROVIDER) -> Option<c_int> {
    let key = CString::new("status").unwrap_or_default();
    let mut status: c_int = -1;
    let mut params = [
        OsslParam {
            key: key.as_ptr(),
            data_type: OSSL_PARAM_INTEGER,
            data: &mut status as *mut c_int as *mut c_void,
            data_size: std::mem::size_of::<c_int>(),
            return_size: OSSL_PARAM_UNMODIFIED,
        },
        OsslParam { key: std::ptr::null(), data_type: 0, data: std::ptr::null_mut(), data_size: 0, return_size: 0 },
    ];
    // SAFETY: `params` is a NULL-key terminated OSSL_PARAM array whose one entry points at
    // `status` (an int of the declared size); `prov` comes from OSSL_PROVIDER_do_all.
    let ok = unsafe { OSSL_PROVIDER_get_params(prov, params.as_mut_ptr()) } == 1;
    (ok && params[0].return_size != OSSL_PARAM_UNMODIFIED).then_some(status)
}

/// Why the gate refused.
#[derive(Debug, thiserror::Error)]
pub enum FipsError {
    #[error("FIPS configuration {0} is missing or unreadable")]
    ConfigMissing(PathBuf),
    #[error("the OpenSSL FIPS provider is not loaded (module missing, tampered or its configuration invalid)")]
    NotLoaded,
    #[error("the FIPS provider is not operational (its self-tests failed or it is in the error state)")]
    SelfTest,
    #[error("fips=yes is not the default property query")]
    NotDefault,
    #[error("providers other than fips and base are active: {0}")]
    ExtraProviders(String),
    #[error("non-approved algorithm {0} was NOT refused")]
    NotRefused(&'static str),
    #[error("approved algorithm {0} failed its known-answer check")]
    ApprovedFailed(&'static str),
}

/// What the gate found; reported by `rapctl status`.
#[derive(Debug, Clone, Serialize)]
pub struct FipsState {
    pub passed: bool,
    pub providers: Vec<String>,
    pub openssl_conf: PathBuf,
    pub openssl_version: String,
    pub detail: String,
}

/// Makes OpenSSL load `conf` as its configuration. Must run before any other OpenSSL
/// use in the process, while it is still single-threaded.
pub fn activate(conf: &Path) -> Result<(), FipsError> {
    if std::fs::metadata(conf).map(|m| !m.is_file()).unwrap_or(true) {
        return Err(FipsError::ConfigMissing(conf.into()));
    }
    // OpenSSL reads OPENSSL_CONF when it initialises; child processes (openvpn) inherit it.
    std::env::set_var("OPENSSL_CONF", conf);
    openssl::init();
    Ok(())
}

struct Seen {
    names: Vec<String>,
    fips: *const OSSL_PROVIDER,
}

extern "C" fn collect(provider: *mut OSSL_PROVIDER, data: *mut c_void) -> c_int {
    // SAFETY: `data` is the `&mut Seen` passed to OSSL_PROVIDER_do_all below, and the
    // provider pointer is valid for the duration of the callback.
    unsafe {
        let seen = &mut *(data as *mut Seen);
        let name = OSSL_PROVIDER_get0_name(provider);
        let name = if name.is_null() { String::from("?") } else { CStr::from_ptr(name).to_string_lossy().into_owned() };
        if name == "fips" {
            seen.fips = provider;
        }
        seen.names.push(name);
    }
    1
}

/// Proves the FIPS state of this process. Call after [`activate`].
pub fn check(conf: &Path) -> Result<FipsState, FipsError> {
    let mut state = FipsState {
        passed: false,
        providers: Vec::new(),
        openssl_conf: conf.into(),
        openssl_version: openssl::version::version().to_owned(),
        detail: String::new(),
    };
    let fips_name = CString::new("fips").unwrap_or_default();
    let mut seen = Seen { names: Vec::new(), fips: std::ptr::null() };
    // SAFETY: plain libcrypto calls on the default library context; `seen` outlives the call.
    let (available, is_default) = unsafe {
        let available = OSSL_PROVIDER_available(std::ptr::null_mut(), fips_name.as_ptr()) == 1;
        OSSL_PROVIDER_do_all(std::ptr::null_mut(), collect, &mut seen as *mut Seen as *mut c_void);
        (available, EVP_default_properties_is_fips_enabled(std::ptr::null_mut()) == 1)
    };
    state.providers = seen.names.clone();
    if !available || seen.fips.is_null() {
        return Err(FipsError::NotLoaded);
    }
    // The module ran its self-tests when it was loaded (it offers no algorithm before they
    // pass); running them all again here only doubled the gate's time at every start.
    if provider_status(seen.fips) != Some(1) {
        return Err(FipsError::SelfTest);
    }
    if !is_default {
        return Err(FipsError::NotDefault);
    }
    let extra: Vec<&str> = seen.names.iter().map(String::as_str).filter(|n| *n != "fips" && *n != "base").collect();
    if !extra.is_empty() {
        return Err(FipsError::ExtraProviders(extra.join(", ")));
    }
    if hash(MessageDigest::md5(), b"abc").is_ok() {
        return Err(FipsError::NotRefused("MD5"));
    }
    let key = [7u8; 32];
    let iv = [9u8; 12];
    let mut tag = [0u8; 16];
    if encrypt_aead(Cipher::chacha20_poly1305(), &key, Some(&iv), b"", b"x", &mut tag).is_ok() {
        return Err(FipsError::NotRefused("ChaCha20-Poly1305"));
    }
    const SHA256_ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    match hash(MessageDigest::sha256(), b"abc") {
        Ok(d) if hex(&d) == SHA256_ABC => {}
        _ => return Err(FipsError::ApprovedFailed("SHA-256")),
    }
    // AES-256-GCM: encrypt then decrypt must round-trip.
    let mut tag = [0u8; 16];
    let ok = encrypt_aead(Cipher::aes_256_gcm(), &key, Some(&iv), b"aad", b"approved", &mut tag)
        .and_then(|ct| openssl::symm::decrypt_aead(Cipher::aes_256_gcm(), &key, Some(&iv), b"aad", &ct, &tag))
        .map(|pt| pt == b"approved")
        .unwrap_or(false);
    if !ok {
        return Err(FipsError::ApprovedFailed("AES-256-GCM"));
    }
    state.passed = true;
    state.detail =
        "fips provider loaded, self-tested and operational; fips=yes default; MD5 and ChaCha20-Poly1305 refused".into();
    Ok(state)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
