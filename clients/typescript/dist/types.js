// The client's option, event and state types (the Client class is in client.ts).
export {};
