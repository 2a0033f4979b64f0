//! The physical limit for the benchmarks' no-op case: an actix-web server that answers every
//! POST with its body, with the same HTTP stack and worker count as ferroserve and nothing
//! else. `bare_echo PORT` serves on 127.0.0.1:PORT until killed.

use actix_web::{web, App, HttpServer};

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("usage: bare_echo PORT");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    HttpServer::new(|| App::new().default_service(web::to(|body: web::Bytes| async move { body })))
        .workers(cores)
        .bind(("127.0.0.1", port))?
        .run()
        .await
}
