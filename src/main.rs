#[tokio::main]
async fn main() -> std::process::ExitCode {
    chatd::cli::run().await
}
