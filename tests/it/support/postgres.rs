//! A fresh database per test in the throwaway PostgreSQL cluster that `scripts/test` starts
//! (`PAYBRIDGE_TEST_POSTGRES_URL`, an admin URL).

use sqlx::Connection;

pub async fn fresh_database() -> String {
    let admin_url = std::env::var("PAYBRIDGE_TEST_POSTGRES_URL").expect(
        "PAYBRIDGE_TEST_POSTGRES_URL is not set: run the suite with scripts/test, which starts a \
         throwaway PostgreSQL cluster",
    );
    let name = format!("paybridge_test_{}", random_suffix());
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .expect("connecting to the test PostgreSQL cluster");
    sqlx::query(&format!("create database {name}"))
        .execute(&mut admin)
        .await
        .expect("create database");
    admin.close().await.ok();
    let mut url = url::Url::parse(&admin_url).expect("admin url");
    url.set_path(&name);
    url.to_string()
}

fn random_suffix() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..12)
        .map(|_| char::from(b'a' + rng.random_range(0..26u8)))
        .collect()
}
