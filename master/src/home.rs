//! Where the master's files live: `DECNET_HOME` (default `~/.decnet`), the CA
//! directory inside it (`DECNET_CA_DIR` overrides) and the database URL
//! (`DECNET_DATABASE_URL` overrides).

use std::path::PathBuf;

use decnet_pki::CaLayout;

/// Resolved locations of the master's state.
#[derive(Clone, Debug)]
pub struct MasterHome {
    /// The decnet home directory.
    pub home: PathBuf,
    /// The CA directory.
    pub ca_dir: PathBuf,
    /// The fleet database URL.
    pub database_url: String,
}

impl MasterHome {
    /// Resolve from explicit options, falling back to the defaults.
    pub fn resolve(
        home: Option<PathBuf>,
        ca_dir: Option<PathBuf>,
        database_url: Option<String>,
    ) -> Self {
        let home = home.unwrap_or_else(decnet_pki::bundle::default_decnet_home);
        let ca_dir = ca_dir.unwrap_or_else(|| home.join("ca"));
        let database_url = database_url.unwrap_or_else(|| decnet_fleet::default_url(&home));
        MasterHome {
            home,
            ca_dir,
            database_url,
        }
    }

    /// The CA layout.
    pub fn ca_layout(&self) -> CaLayout {
        CaLayout::new(&self.ca_dir)
    }
}
